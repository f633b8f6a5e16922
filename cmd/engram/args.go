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
		case (a == "--help" || a == "-h") && !hasFlag(cmd.Flags, "h"):
			// urfave/cli would take the arguments as help topics ("No
			// help topic for 'vm.qcow2'", exit 1): help is all that
			// was asked for, so show it and exit 0 as `ingest --help` does.
			return append(append([]string{}, args[:i+1]...), "--help")
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

// misplacedGlobal returns the first global flag given after the command
// (`engram ingest x.qcow2 -q`, `engram ls --store S`) and the command's
// name, "" if none: the
// command's parser knows only its own flags and would say the flag "is
// not defined", though README documents it. A flag the command defines
// itself is the command's.
func misplacedGlobal(app *cli.App, args []string) (flag, command string) {
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" {
		if !isBoolFlag(app.Flags, args[i]) && !strings.Contains(args[i], "=") {
			i++
		}
		i++
	}
	if i >= len(args) {
		return "", ""
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return "", ""
	}
	globals := append([]cli.Flag{cli.VersionFlag}, app.Flags...)
	for j := i + 1; j < len(args); j++ {
		a := args[j]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if hasFlag(cmd.Flags, name) {
			if !isBoolFlag(cmd.Flags, a) && !strings.Contains(a, "=") {
				j++ // its value
			}
			continue
		}
		if hasFlag(globals, name) {
			return a, cmd.Name
		}
	}
	return "", ""
}

func hasFlag(fs []cli.Flag, name string) bool {
	for _, f := range fs {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// helpWord turns `engram help [COMMAND]` into `engram [COMMAND] --help`:
// the help command is hidden (HideHelpCommand), but git, go and restic
// users type it, and "no command help" sent them away.
func helpWord(app *cli.App, args []string) []string {
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" {
		if !isBoolFlag(app.Flags, args[i]) && !strings.Contains(args[i], "=") {
			i++
		}
		i++
	}
	if i >= len(args) || args[i] != "help" || app.Command("help") != nil {
		return args
	}
	out := append([]string{}, args[:i]...)
	if i+1 < len(args) {
		out = append(out, args[i+1]) // an unknown one is named by unknownCommand
	}
	return append(out, "--help")
}
