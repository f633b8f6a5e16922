package main

import "fmt"

// plural is "1 chunk" or "n chunks": counts in messages are often 1 (one
// engram verified, one range differs), and "1 ranges" reads as a bug.
func plural[N ~int | ~int32 | ~int64 | ~uint32 | ~uint64](n N, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// pluralVerb is plural with the verb that agrees: "1 engram has", "2
// engrams have".
func pluralVerb[N ~int | ~int32 | ~int64 | ~uint32 | ~uint64](n N, word, one, many string) string {
	if n == 1 {
		return plural(n, word) + " " + one
	}
	return plural(n, word) + " " + many
}

// pick is one when n is 1, else many.
func pick[N ~int | ~int32 | ~int64 | ~uint32 | ~uint64](n N, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
