// Package docs carries the rendered flow diagrams (docs/diagrams/*.svg,
// made by `make diagrams`) into the binary, so the node's console can show
// them offline. It holds no code beyond the embedding.
package docs

import (
	"embed"
	"io/fs"
	"regexp"
	"slices"
	"strings"
)

//go:embed diagrams/*.svg diagrams/*.puml
var diagrams embed.FS

// Diagram is one flow diagram.
type Diagram struct {
	File     string `json:"file"`     // the SVG's file name
	Title    string `json:"title"`    // the source's title line
	Operator bool   `json:"operator"` // drawn for operators (ops-*), not contributors
}

var titleRe = regexp.MustCompile(`(?m)^title (.+)$`)

// Diagrams lists the flow diagrams, operator-level ones first, each group
// by file name.
func Diagrams() []Diagram {
	var out []Diagram
	names, _ := fs.Glob(diagrams, "diagrams/*.svg")
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "diagrams/"), ".svg")
		d := Diagram{File: base + ".svg", Title: base, Operator: strings.HasPrefix(base, "ops-")}
		if src, err := diagrams.ReadFile("diagrams/" + base + ".puml"); err == nil {
			if m := titleRe.FindSubmatch(src); m != nil {
				d.Title = strings.TrimSpace(string(m[1]))
			}
		}
		if !d.Operator {
			d.Title = "Contributor view: " + d.Title
		}
		out = append(out, d)
	}
	slices.SortStableFunc(out, func(a, b Diagram) int {
		if a.Operator != b.Operator {
			if a.Operator {
				return -1
			}
			return 1
		}
		return strings.Compare(a.File, b.File)
	})
	return out
}

// SVG reads one rendered diagram by file name.
func SVG(file string) ([]byte, error) {
	return diagrams.ReadFile("diagrams/" + file)
}
