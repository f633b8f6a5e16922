package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// permuteArgs moves a command's flags in front of its positional arguments,
// so `engram restore ID -o out.qcow2` works: urfave/cli v2 stops parsing
// flags at the first positional argument. "--" ends flag parsing.
func permuteArgs(app *cli.App, args []string) []string {
	// Find the command: the first argument that is not a global flag.
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" {
		if !isBoolFlag(app.Flags, args[i]) && !strings.Contains(args[i], "=") {
			i++ // its value
		}
		i++
	}
	if i >= len(args) {
		return args
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return args // run reports an unknown command (unknownCommand)
	}
	var flags, pos []string
	rest := args[i+1:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		switch {
		case a == "--":
			pos = append(pos, rest[j:]...)
			j = len(rest)
		case strings.HasPrefix(a, "-") && a != "-":
			flags = append(flags, a)
			if !isBoolFlag(cmd.Flags, a) && !strings.Contains(a, "=") && j+1 < len(rest) {
				j++
				flags = append(flags, rest[j])
			}
		default:
			pos = append(pos, a)
		}
	}
	out := append([]string{}, args[:i+1]...)
	out = append(out, flags...)
	return append(out, pos...)
}

// isBoolFlag reports whether arg names a flag among fs that takes no value.
// Unknown flags count as boolean, so the parser reports them itself.
func isBoolFlag(fs []cli.Flag, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	for _, f := range fs {
		for _, n := range f.Names() {
			if n == name {
				_, isBool := f.(*cli.BoolFlag)
				return isBool
			}
		}
	}
	return true
}

// unknownCommand returns the command word of args when the app has no
// such command ("" when it has, or there is none): urfave/cli would only
// say "No help topic" and exit 3, the code of a missing engram.
func unknownCommand(app *cli.App, args []string) string {
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" {
		if !isBoolFlag(app.Flags, args[i]) && !strings.Contains(args[i], "=") {
			i++
		}
		i++
	}
	if i >= len(args) || app.Command(args[i]) != nil {
		return ""
	}
	return args[i]
}
