// Command ferry runs a Ferry node and operates it: init, run, demo, and the
// operator commands of SPEC.md, which talk to the local node's admin API.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries an exit code through cobra.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		if printUsageError(os.Stderr, err) {
			os.Exit(exitUsage)
		}
		fmt.Fprintln(os.Stderr, "ferry:", err)
		os.Exit(1)
	}
}

type globals struct {
	home     string
	json     bool
	absolute bool
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Ferry: a peer-to-peer propagation node (NATS for apps, libp2p between sites)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.home, "home", "", "node home directory (default $FERRY_HOME, else ~/.ferry)")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print JSON instead of a table")
	root.PersistentFlags().BoolVar(&g.absolute, "absolute", false, "print times as RFC 3339 in UTC instead of relative (3m ago)")
	root.AddCommand(initCmd(g), runCmd(g), demoCmd(g), versionCmd(g), checkCmd(g))
	root.AddCommand(operatorCmds(g)...)
	strictUsage(root)
	return root
}
