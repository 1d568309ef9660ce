// Command localdns-nodecache is filled in by its package; see README.md.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "localdns-nodecache: not built yet")
	os.Exit(2)
}
