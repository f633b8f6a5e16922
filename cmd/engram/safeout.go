package main

import (
	"io"
	"strings"
	"unicode/utf8"
)

// safeWriter is stdout for the text of every command (tables, show,
// inspect): names, labels and source paths come from the command line and
// from image headers, and an escape sequence or carriage return in one
// must not reach the terminal. Control characters other than newline and
// tab are written as \xNN (as escapeControl does on stderr); a UTF-8
// sequence split between two writes is held until it is whole. JSON
// output passes unchanged (it escapes control characters itself), and
// `restore -o -` writes the image to os.Stdout, not through this.
type safeWriter struct {
	w    io.Writer
	pend []byte // an incomplete UTF-8 sequence at the end of the last write
}

func (s *safeWriter) Write(p []byte) (int, error) {
	b := append(s.pend, p...)
	cut := len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i
			}
			break
		}
	}
	s.pend = append([]byte(nil), b[cut:]...)
	if _, err := io.WriteString(s.w, escapeText(string(b[:cut]))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush writes what is held (an incomplete sequence, escaped).
func (s *safeWriter) flush() error {
	if len(s.pend) == 0 {
		return nil
	}
	_, err := io.WriteString(s.w, escapeControl(string(s.pend)))
	s.pend = nil
	return err
}

// escapeText is escapeControl for text of several lines: newlines and tabs
// stay.
func escapeText(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool {
		return r == utf8.RuneError || (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r < 0xa0)
	}) {
		return s
	}
	var b strings.Builder
	for len(s) > 0 {
		i := strings.IndexAny(s, "\n\t")
		if i < 0 {
			b.WriteString(escapeControl(s))
			break
		}
		b.WriteString(escapeControl(s[:i]))
		b.WriteByte(s[i])
		s = s[i+1:]
	}
	return b.String()
}
