package main

import "github.com/spf13/cobra"

func demoCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "demo", Short: "Play source 000 on four local nodes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd, g, false) }}
}

func runDemo(cmd *cobra.Command, g *globals, keep bool) error { return nil }
