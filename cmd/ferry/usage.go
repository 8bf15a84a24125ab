package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// usageError is a mistake in the command line (an unknown command, a
// missing or extra argument, an unknown or malformed flag): ferry prints it
// with the command's usage and exits 2, as command-line tools do.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitUsage is the exit status of a usage error.
const exitUsage = 2

// printUsageError writes a usage error and the usage of its command.
func printUsageError(w io.Writer, err error) bool {
	var ue usageError
	if !errors.As(err, &ue) {
		return false
	}
	fmt.Fprintf(w, "ferry: %v\n\n%s", ue.err, ue.cmd.UsageString())
	return true
}

// strictUsage makes every command of the tree report command-line mistakes
// as usage errors: a command that only groups others refuses an unknown
// one (with cobra's "did you mean"), argument counts name what the command
// takes, and flag errors carry the usage.
func strictUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{c, err} })
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.SuggestionsMinimumDistance = 2
		if c.Example == "" {
			c.Example = examples[c.CommandPath()]
		}
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) == 0 {
					return c.Help()
				}
				msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
				if s := c.SuggestionsFor(args[0]); len(s) > 0 {
					msg += "; did you mean " + strings.Join(s, " or ") + "?"
				}
				return usageError{c, errors.New(msg)}
			}
		} else if check := c.Args; check != nil {
			c.Args = func(c *cobra.Command, args []string) error {
				if err := check(c, args); err != nil {
					return usageError{c, fmt.Errorf("%s takes %s; got %s", c.CommandPath(), argsOf(c), count(len(args)))}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// argsOf names the arguments in a command's Use line ("no arguments").
func argsOf(c *cobra.Command) string {
	f := strings.Fields(c.Use)
	if len(f) < 2 {
		return "no arguments"
	}
	return strings.Join(f[1:], " ")
}

func count(n int) string {
	switch n {
	case 0:
		return "no arguments"
	case 1:
		return "1 argument"
	}
	return fmt.Sprintf("%d arguments", n)
}

// selfCommand is how a person at this shell runs this ferry again, for the
// commands that run and demo --keep print: "ferry" when that is on PATH and
// is this binary, "go run ./cmd/ferry" under go run (a binary in Go's build
// cache), else this binary's path.
func selfCommand() string {
	exe, err := os.Executable()
	if err != nil {
		return "ferry"
	}
	exe, _ = filepath.EvalSymlinks(exe)
	if p, err := exec.LookPath("ferry"); err == nil {
		if p, err = filepath.EvalSymlinks(p); err == nil && p == exe {
			return "ferry"
		}
	}
	if strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return "go run ./cmd/ferry"
	}
	return exe
}

// examples are shown in each command's help.
var examples = map[string]string{
	"ferry": `  ferry run --home ~/.ferry/A           # run a node
  ferry status                          # what the local node is doing ($FERRY_HOME or ~/.ferry)
  ferry --home ~/.ferry/C requests list # the review queue of the node at that home`,
	"ferry init": `  ferry init --home ~/.ferry/A --name A
  ferry init --name site-7 --network acme   # the node's name and the network it joins`,
	"ferry run": `  ferry run --home ~/.ferry/A
  ferry run --nats-url nats://127.0.0.1:4222   # apps reach the node through an external NATS
  ferry run --partners 12D3KooW...,12D3KooW... --log-level debug
  FERRY_LIMITS_MIN_FREE_DISK_MB=1024 ferry run   # every key of ferry.yaml as an env variable too`,
	"ferry demo": `  ferry demo
  ferry demo --keep --dir /tmp/ferry-demo   # leave the four nodes running; their homes under /tmp/ferry-demo`,
	"ferry check": `  ferry check                           # exit 0 ok, 1 warning, 2 critical
  ferry check --backlog-warning 1m --backlog-critical 10m
  ferry check --json
  ferry check --container               # a HEALTHCHECK: 1 only when the node itself is in trouble`,
	"ferry version": `  ferry version
  ferry version --json`,
	"ferry status": `  ferry status
  ferry status --json | jq .health`,
	"ferry peers": `  ferry peers
  ferry peers --absolute   # last seen as RFC 3339 times`,
	"ferry partners":        `  ferry partners list`,
	"ferry partners list":   `  ferry partners list --json`,
	"ferry partners add":    "  ferry partners add 12D3KooWJ6...   # the peer id that ferry init printed on the partner\n  ferry partners add /ip4/10.0.0.7/tcp/4001/p2p/12D3KooWJ6...   # a partner that is not a Ferry node: its address is kept",
	"ferry partners remove": `  ferry partners remove 12D3KooWJ6...`,
	"ferry members":         `  ferry members list`,
	"ferry members list": `  ferry members list
  ferry members list --json | jq '.[] | select(.state != "member")'`,
	"ferry members remove":   `  ferry members remove 12D3KooWJ6...   # gone for good: no longer addressed, its pending rows closed`,
	"ferry members add":      `  ferry members add 12D3KooWJ6...      # undoes a removal`,
	"ferry reviewers":        `  ferry reviewers list`,
	"ferry reviewers list":   "  ferry reviewers list\n  ferry reviewers list --json | jq '.servers[] | {name, state: .status.state}'",
	"ferry reviewers add":    `  ferry reviewers add 12D3KooWJ6...   # listed in every node's reviewers; it joins from the group's snapshot`,
	"ferry reviewers remove": `  ferry reviewers remove 12D3KooWJ6...   # then take it out of every node's reviewers`,
	"ferry requests":         `  ferry requests list --status waiting`,
	"ferry requests list": `  ferry requests list
  ferry requests list --status waiting`,
	"ferry requests show":   `  ferry requests show 17`,
	"ferry requests accept": `  ferry requests accept 17 --note "checked with the site"`,
	"ferry requests reject": `  ferry requests reject 17 --note "duplicate of 12"`,
	"ferry requests edit": `  ferry requests edit 17 --set name=name4 --set unique_num=40124
  ferry requests edit 17 --data '{"unique_num": 40124, "name": "name4"}' --note "fixed the name"`,
	"ferry acks": `  ferry acks list --pending`,
	"ferry acks list": `  ferry acks list
  ferry acks list --request 17
  ferry acks list --pending`,
	"ferry rows": `  ferry rows tb1`,
	"ferry resources": `  ferry resources
  ferry resources vm`,
	"ferry publish": `  ferry publish create vm '{"id": "vm1", "cpu": 2}'
  ferry publish delete vm '{"id": "vm1"}'`,
	"ferry submit": `  ferry submit insert tb1 3 '{"unique_num": 40123, "name": "name3"}'`,
	"ferry search": `  ferry search peer B
  ferry search vm vm1 --scope partner`,
	"ferry watch": `  ferry watch
  ferry watch --json`,
	"ferry trace": `  ferry trace 12D3KooWJ6.../1796506403439447   # an origin peer id and its version, from ferry watch or ferry.changes`,
}
