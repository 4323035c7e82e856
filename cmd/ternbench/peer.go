package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
)

// runPeer runs Postfix then Tern for each round and pass, prints every
// result as a JSON line, then a table of medians and Tern/Postfix ratios.
func runPeer(ctx context.Context, o options) error {
	if _, err := os.Stat(o.Postfix); err != nil {
		return err
	}
	type key struct{ mta, pass string }
	all := map[key][]result{}
	for round := 1; round <= o.Rounds; round++ {
		for _, pass := range o.Passes {
			for _, mk := range []newMTA{postfixMTA, ternMTA} {
				r, err := onePass(ctx, o, mk, pass, "")
				if err != nil {
					return fmt.Errorf("round %d, %s pass: %w", round, pass, err)
				}
				r.print(o.Out)
				all[key{r.MTA, pass}] = append(all[key{r.MTA, pass}], r)
			}
		}
	}
	fmt.Fprintf(o.Out, "\n%d messages of %d bytes, %d sessions, %d rounds; medians\n", o.N, o.Size, o.Sessions, o.Rounds)
	tw := tabwriter.NewWriter(o.Out, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pass\tfigure\tPostfix\tTern\tTern/Postfix\t")
	for _, pass := range o.Passes {
		pf, tn := all[key{"postfix", pass}], all[key{"tern", pass}]
		for _, fig := range []struct {
			name string
			get  func(result) float64
		}{
			{"accepted/s", func(r result) float64 { return r.AcceptedPerS }},
			{"delivered/s", func(r result) float64 { return r.DeliveredPS }},
			{"peak memory MB", func(r result) float64 { return r.PeakRSSMB }},
			{"CPU s", func(r result) float64 { return r.CPUSecs }},
		} {
			a, b := median(pf, fig.get), median(tn, fig.get)
			ratio := "-"
			if a > 0 {
				ratio = fmt.Sprintf("%.2f×", b/a)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f\t%s\t\n", pass, fig.name, a, b, ratio)
		}
	}
	return tw.Flush()
}

func median(rs []result, get func(result) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = get(r)
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
