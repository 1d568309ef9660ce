// Package kubectlplugin is `kubectl localdns`, a kubectl plugin that shows
// and acts on localdns in a cluster: its state (status), the pods that
// should be injected and are not (pods), rolling their workloads (restart),
// and what the webhook would do to a pod now (explain).
//
// It reads the webhook's flags from its Deployment and decides with the
// webhook's own Decide, after the API server's selection by the
// MutatingWebhookConfiguration, so its answers are the webhook's.
package kubectlplugin

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/localdns/localdns/internal/version"
)

// options are the flags every subcommand shares.
type options struct {
	streams         genericiooptions.IOStreams
	config          *genericclioptions.ConfigFlags
	systemNamespace string
	output          string
	now             func() time.Time
}

// session is one command's connection to the cluster.
type session struct {
	*options
	restConfig *rest.Config
	client     kubernetes.Interface
	// namespace is -n, else the kubeconfig context's namespace.
	namespace string
}

// NewCommand returns `kubectl localdns` and its subcommands. now is the
// clock (certificate expiry, restart timestamps).
func NewCommand(streams genericiooptions.IOStreams, now func() time.Time) *cobra.Command {
	o := &options{streams: streams, config: genericclioptions.NewConfigFlags(true), now: now}
	root := &cobra.Command{
		Use:   "kubectl-localdns",
		Short: "Show and act on localdns: status, uninjected pods, restarts, explain",
		Long: "kubectl localdns shows the state of localdns in the cluster and acts on it.\n" +
			"It decides like the webhook: with the flags of the deployed webhook and its own decision function.",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl localdns"},
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	// No -v shorthand: in kubectl, -v is the log verbosity.
	root.Flags().Bool("version", false, "print the version of kubectl-localdns")
	flags := root.PersistentFlags()
	o.config.AddFlags(flags)
	flags.StringVar(&o.systemNamespace, "system-namespace", DefaultSystemNamespace, "namespace localdns is installed in")
	flags.StringVarP(&o.output, "output", "o", "", "output format: json, yaml or kyaml; tables when empty")
	root.AddCommand(newStatusCommand(o), newPodsCommand(o), newRestartCommand(o), newExplainCommand(o))
	return root
}

// connect validates the shared flags and builds the clients.
func (o *options) connect() (*session, error) {
	if err := validOutput(o.output); err != nil {
		return nil, err
	}
	restConfig, err := o.config.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	namespace, _, err := o.config.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, fmt.Errorf("resolve the namespace: %w", err)
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	return &session{options: o, restConfig: restConfig, client: client, namespace: namespace}, nil
}

func (s *session) out() output { return output{format: s.output, out: s.streams.Out} }

func (s *session) installation(ctx context.Context) (*installation, error) {
	return readInstallation(ctx, s.client, s.systemNamespace)
}
