// Command engram archives VM disk images into a deduplicating chunk store
// and restores them as sparse images. This package only parses flags; the
// work is done by the packages it calls.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
)

func main() {
	// A soft heap limit keeps ingest's footprint flat: its buffers are
	// bounded, but garbage from compression would otherwise let the heap
	// grow to twice the live size. GOMEMLIMIT overrides it.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(160 << 20)
	}
	stop := startDiagnostics()
	code := run(os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// startDiagnostics starts what the environment asks for over the whole
// command (bench/README.md; the library-level profiler is bench/prof):
// ENGRAM_CPUPROFILE=FILE a CPU profile, ENGRAM_TRACE=FILE an execution
// trace (where goroutines wait, how busy the cores are). A file that
// cannot be created is skipped: diagnostics never fail a command.
func startDiagnostics() (stop func()) {
	var stops []func()
	if p := os.Getenv("ENGRAM_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if p := os.Getenv("ENGRAM_TRACE"); p != "" {
		if f, err := os.Create(p); err == nil && trace.Start(f) == nil {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

// run executes the app and maps its error to an exit code; it never exits
// itself, so deferred cleanup in commands always runs.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := &safeWriter{w: stdout}
	defer out.flush()
	app := newApp(out, stderr)
	args = helpWord(app, args)
	var err error
	if name := unknownCommand(app, args); name != "" {
		err = usagef("no command %q (engram --help lists them)", name)
	} else if f, cmd := misplacedGlobal(app, args); f != "" {
		f, _, _ = strings.Cut(f, "=")
		err = usagef("%s is a global flag: it goes before the command (engram %s ... %s ...)", escapeControl(f), escapeControl(f), cmd)
	} else {
		err = app.RunContext(ctx, permuteArgs(app, args))
	}
	if err == nil {
		return 0
	}
	code := exitCode(ctx, err)
	fmt.Fprintf(stderr, "engram: %s\n", errorText(ctx, err))
	return code
}

// errorLine is err's message on one line: the errors errors.Join put on
// lines of their own are separated by "; ", and every other control
// character — a newline in a file name included — is escaped, so the
// name is not mistaken for two errors.
func errorLine(err error) string {
	msg := err.Error()
	if !strings.Contains(msg, "\n") {
		return escapeControl(msg)
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		subs := u.Unwrap()
		texts := make([]string, len(subs))
		for i, e := range subs {
			texts[i] = e.Error()
		}
		if msg == strings.Join(texts, "\n") { // errors.Join's
			lines := make([]string, len(subs))
			for i, e := range subs {
				lines[i] = errorLine(e)
			}
			return strings.Join(lines, "; ")
		}
	case interface{ Unwrap() error }:
		if in := u.Unwrap(); in != nil && strings.HasSuffix(msg, in.Error()) {
			return escapeControl(msg[:len(msg)-len(in.Error())]) + errorLine(in)
		}
	}
	return escapeControl(msg)
}

// escapeControl makes s safe for one line on a terminal: names from image
// headers or the command line may hold NULs, newlines or escape sequences,
// which are shown as \xNN (and invalid UTF-8 bytes likewise).
func escapeControl(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1, r < 0x20, r == 0x7f:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case r >= 0x80 && r < 0xa0: // C1 controls, such as CSI
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// warnFunc prints one-line warnings (qcow2.Open's, a damaged object a
// store skipped) on stderr, -q or not: as restic's --quiet, -q silences
// progress and notes, never what may be wrong.
func warnFunc(c *cli.Context) func(string) {
	return func(msg string) { fmt.Fprintf(c.App.ErrWriter, "engram: %s\n", escapeControl(msg)) }
}

// noteFunc prints qcow2.Open's notes (probed raw, the dirty bit) on
// stderr, and nothing under -q.
func noteFunc(c *cli.Context) func(string) {
	if c.Bool(quietFlag.Name) {
		return func(string) {}
	}
	return warnFunc(c)
}

func newApp(stdout, stderr io.Writer) *cli.App {
	commandsOnce.Do(setUsageChecks)
	return &cli.App{
		Name:                 "engram",
		Version:              buildVersion().Version,
		Usage:                "archive VM disk images into a deduplicating chunk store and restore them",
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		// --label owners=ann,bob is one label, not "owners=ann" and "bob".
		DisableSliceFlagSeparator: true,
		HideHelpCommand:           true,
		Flags:                     globalFlags,
		ExitErrHandler:            func(*cli.Context, error) {}, // run() maps errors to exit codes
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Commands: commands,
	}
}

var commands = []*cli.Command{
	initCommand,
	ingestCommand,
	restoreCommand,
	lsCommand,
	showCommand,
	rmCommand,
	gcCommand,
	verifyCommand,
	repairCommand,
	upgradeCommand,
	statsCommand,
	diffCommand,
	inspectCommand,
	versionCommand,
	sketchCommand,
	similarCommand,
	lineageCommand,
	treeCommand,
	mountCommand,
	serveCommand,
}

var commandsOnce sync.Once

// setUsageChecks makes every command's bad command line exit 2 as the
// global flags' does (a command's own flag errors went to exit 1), and
// refuses arguments to the commands that take none (ArgsUsage " "):
// `engram gc web-01` must not collect the whole store unasked.
func setUsageChecks() {
	for _, cmd := range commands {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err} }
		}
		if cmd.ArgsUsage == " " && cmd.Before == nil {
			name := cmd.Name
			cmd.Before = func(c *cli.Context) error {
				if c.NArg() > 0 {
					return usagef("%s takes no arguments", name)
				}
				return nil
			}
		}
	}
}

// usageError marks bad command-line use (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func errorText(ctx context.Context, err error) string {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return "interrupted; nothing partial was committed"
	}
	return errorLine(err)
}
