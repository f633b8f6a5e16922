package main

import (
	"os"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// progress is what ingest and restore report to; nil means none.
type progress interface {
	Start(total int64)
	Add(n int64)
	Finish()
}

// barProgress shows a progress bar with throughput and ETA on stderr.
type barProgress struct {
	desc string
	bar  *progressbar.ProgressBar
}

func (p *barProgress) Start(total int64) {
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(p.desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionFullWidth(),
	)
}

func (p *barProgress) Add(n int64) {
	if p.bar != nil {
		_ = p.bar.Add64(n)
	}
}

func (p *barProgress) Finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

// progressFor returns a bar when stderr is a terminal and output is not
// quiet or JSON; otherwise nil (no progress at all).
func progressFor(c *cli.Context, desc string) progress {
	if c.Bool(quietFlag.Name) || c.Bool(jsonFlag.Name) || !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	return &barProgress{desc: desc}
}
