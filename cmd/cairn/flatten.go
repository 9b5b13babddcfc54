package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"cairn/cluster/admin"
)

// Waiting for a flatten: the CLI polls the daemon until the flatten is
// complete. In a terminal it redraws a progress bar; with --json it
// prints one JSON object per change (percent, eta_seconds); otherwise it
// prints the final state. Interrupting the CLI leaves the flatten running.

const (
	flattenPoll        = 500 * time.Millisecond
	flattenPollTimeout = 30 * time.Second // one status request
	// flattenPollErrorsMax bounds the consecutive failed polls before the
	// CLI gives up waiting (the flatten goes on).
	flattenPollErrorsMax = 20
	progressBarWidth     = 40
)

// isTerminal reports whether w is a character device.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (c *cli) waitFlatten(volume string, st admin.FlattenStatus) error {
	tty := !c.json && isTerminal(c.out)
	var last admin.FlattenStatus
	failures := 0
	for first := true; ; first = false {
		if first || (st.Percent != last.Percent || st.State != last.State || st.ETASeconds != last.ETASeconds) {
			switch {
			case c.json:
				if err := json.NewEncoder(c.out).Encode(st); err != nil {
					return err
				}
			case tty:
				fmt.Fprintf(c.out, "\r%s", progressLine(st))
			}
		}
		last = st
		if st.State != "running" {
			break
		}
		time.Sleep(flattenPoll)
		ctx, cancel := context.WithTimeout(context.Background(), flattenPollTimeout)
		next, err := c.client.FlattenStatus(ctx, volume)
		cancel()
		if err != nil {
			if failures++; failures >= flattenPollErrorsMax {
				return fmt.Errorf("flatten of %s still running; gave up waiting: %w", volume, err)
			}
			continue
		}
		failures = 0
		st = next
	}
	if tty {
		fmt.Fprintln(c.out)
	}
	if c.json {
		return nil
	}
	return c.printFlatten(st)
}

// progressLine is the terminal line of a flatten's progress.
func progressLine(st admin.FlattenStatus) string {
	filled := int(st.Percent / 100 * progressBarWidth)
	filled = min(max(filled, 0), progressBarWidth)
	eta := "--"
	if st.ETASeconds >= 0 {
		eta = (time.Duration(st.ETASeconds) * time.Second).String()
	}
	return fmt.Sprintf("flatten %s [%s%s] %5.1f%% eta %s ", st.Volume,
		strings.Repeat("=", filled), strings.Repeat(" ", progressBarWidth-filled), st.Percent, eta)
}

func (c *cli) printFlatten(st admin.FlattenStatus) error {
	return c.print(st, func(w io.Writer) {
		fmt.Fprintf(w, "volume\t%s\nflatten\t%s\n", st.Volume, st.State)
		if st.Parent != "" {
			fmt.Fprintf(w, "reads through\t%s\n", st.Parent)
		}
		fmt.Fprintf(w, "progress\t%.1f%% (%d of %d blocks)\n", st.Percent, st.DoneBlocks, st.TotalBlocks)
		if st.State == "running" && st.ETASeconds >= 0 {
			fmt.Fprintf(w, "eta\t%s\n", time.Duration(st.ETASeconds)*time.Second)
		}
		if !st.Completed.IsZero() {
			fmt.Fprintf(w, "completed\t%s (took %s)\n", st.Completed.Format(time.RFC3339), st.Completed.Sub(st.Requested).Round(time.Millisecond))
		}
	})
}
