// Command kubectl-localdns is the kubectl plugin for localdns: put it on
// PATH and run `kubectl localdns status|pods|restart|explain`; see the
// README and docs/deploy.md.
package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/manager/signals"

	"github.com/localdns/localdns/internal/cli"
	"github.com/localdns/localdns/kubectlplugin"
)

func main() {
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	cmd := kubectlplugin.NewCommand(streams, time.Now)
	if err := cmd.ExecuteContext(signals.SetupSignalHandler()); err != nil {
		if !errors.Is(err, kubectlplugin.ErrUnhealthy) {
			fmt.Fprintln(os.Stderr, "error:", err)
		}
		os.Exit(cli.ExitFailure)
	}
}
