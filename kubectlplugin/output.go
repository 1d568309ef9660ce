package kubectlplugin

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/printers"
)

// OutputAPIVersion is the apiVersion of what -o json|yaml prints: the
// plugin's own report kinds (Status, UninjectedPodList, RestartList,
// Explanation), not objects of the cluster.
const OutputAPIVersion = "kubectl.localdns.io/v1alpha1"

// output prints a report as tables (the default) or, with -o, as one JSON or
// YAML document through cli-runtime's printers, as kubectl does.
type output struct {
	format string // "" for tables
	out    io.Writer
}

// jsonYAML is the printer of -o json|yaml (and kyaml).
var jsonYAML = &genericclioptions.JSONYamlPrintFlags{}

// validOutput checks -o before anything is read from the cluster.
func validOutput(format string) error {
	if format == "" || slices.Contains(jsonYAML.AllowedFormats(), format) {
		return nil
	}
	return fmt.Errorf("--output %q: want one of json, yaml, kyaml (or none for tables)", format)
}

// table is one printed table; empty tables print nothing.
type table struct {
	columns []string
	rows    [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// print writes report as kind, or its tables separated by blank lines.
func (o output) print(kind string, report any, tables ...table) error {
	if o.format != "" {
		return o.printObject(kind, report)
	}
	printer := printers.NewTablePrinter(printers.PrintOptions{})
	printed := false
	for _, t := range tables {
		if len(t.rows) == 0 {
			continue
		}
		if printed {
			if _, err := fmt.Fprintln(o.out); err != nil {
				return err
			}
		}
		if err := printer.PrintObj(t.metaTable(), o.out); err != nil {
			return err
		}
		printed = true
	}
	return nil
}

func (t table) metaTable() *metav1.Table {
	mt := &metav1.Table{}
	for _, c := range t.columns {
		mt.ColumnDefinitions = append(mt.ColumnDefinitions, metav1.TableColumnDefinition{Name: c, Type: "string"})
	}
	for _, r := range t.rows {
		cells := make([]any, len(r))
		for i, c := range r {
			cells[i] = c
		}
		mt.Rows = append(mt.Rows, metav1.TableRow{Cells: cells})
	}
	return mt
}

// printObject prints report with apiVersion and kind, so the JSON and YAML
// printers (which insist on both) take it like any object.
func (o output) printObject(kind string, report any) error {
	printer, err := jsonYAML.ToPrinter(o.format)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(report)
	if err != nil {
		return fmt.Errorf("encode %s: %w", kind, err)
	}
	obj := &unstructured.Unstructured{}
	if err := json.Unmarshal(raw, &obj.Object); err != nil {
		return fmt.Errorf("encode %s: %w", kind, err)
	}
	obj.SetAPIVersion(OutputAPIVersion)
	obj.SetKind(kind)
	return printer.PrintObj(obj, o.out)
}

// orDash is a table cell for an optional value.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
