// Command localdns-webhook is the mutating admission webhook that points
// opted-in pods' DNS at the node cache (or an injected stub); see docs/webhook.md.
package main

import (
	"context"
	"os"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager/signals"

	"github.com/localdns/localdns/certs"
	"github.com/localdns/localdns/internal/cli"
	"github.com/localdns/localdns/webhook"
)

func main() {
	cfg, err := webhook.Parse("localdns-webhook", os.Args[1:], os.Getenv, os.Stderr)
	cli.ExitOnParseError("localdns-webhook", err)
	logger := logr.FromSlogHandler(cli.NewLogger(cfg.LogFormat, "localdns-webhook").Handler())
	ctrllog.SetLogger(logger)
	klog.SetLogger(logger)

	if err := run(signals.SetupSignalHandler(), cfg, logger); err != nil {
		logger.Error(err, "localdns-webhook failed")
		os.Exit(cli.ExitFailure)
	}
}

func run(ctx context.Context, cfg webhook.Config, logger logr.Logger) error {
	restConfig, err := webhook.RESTConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	return webhook.Run(ctx, cfg, restConfig, func(ctx context.Context, clientset kubernetes.Interface) (webhook.CertSource, error) {
		if cfg.CertDir != "" {
			return certs.NewFromDir(cfg.CertDir)
		}
		return certs.NewSelfManaged(ctx, clientset, certs.SelfManagedConfig{
			Namespace:         cfg.Namespace,
			SecretName:        cfg.SecretName,
			ServiceName:       cfg.ServiceName,
			WebhookConfigName: cfg.WebhookConfigName,
			ClusterDomain:     cfg.ClusterDomain,
			Logger:            logger.WithName("certs"),
		})
	})
}
