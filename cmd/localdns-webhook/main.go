// Command localdns-webhook is filled in by its package; see README.md.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "localdns-webhook: not built yet")
	os.Exit(2)
}
