package kubectlplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// restartedAtAnnotation is the pod template annotation `kubectl rollout
// restart` sets; changing it rolls the workload.
const restartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// fieldManager names the plugin's changes in managedFields.
const fieldManager = "kubectl-localdns"

// --dry-run values, as kubectl has them.
const (
	dryRunNone   = "none"
	dryRunClient = "client"
	dryRunServer = "server"
)

// What restart did with a workload.
const (
	ActionRestarted      = "restarted"
	ActionWouldRestart   = "would restart"
	ActionRestartChecked = "would restart (server dry run)"
	ActionSkipped        = "skipped"
)

// RestartItem is one workload owning uninjected pods.
type RestartItem struct {
	Workload Workload `json:"workload"`
	Pods     []string `json:"pods"`
	Action   string   `json:"action"`
	Note     string   `json:"note,omitempty"`
}

// RestartList is `kubectl localdns restart`.
type RestartList struct {
	Namespace string        `json:"namespace"`
	Items     []RestartItem `json:"items"`
}

func newRestartCommand(o *options) *cobra.Command {
	dryRun := dryRunNone
	cmd := &cobra.Command{
		Use:   "restart -n NAMESPACE [--dry-run[=client|server]]",
		Short: "Roll the Deployments, StatefulSets and DaemonSets owning pods that should be injected",
		Long: "Rolls the workloads that own the namespace's uninjected pods (see `kubectl localdns pods`)\n" +
			"with the patch `kubectl rollout restart` makes, so their new pods go through the webhook.\n" +
			"Pods without such a workload (bare pods, Jobs) are listed and left alone.",
		Example: "  kubectl localdns restart -n shop --dry-run\n  kubectl localdns restart -n shop",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !slices.Contains([]string{dryRunNone, dryRunClient, dryRunServer}, dryRun) {
				return fmt.Errorf("--dry-run %q: want none, client or server", dryRun)
			}
			s, err := o.connect()
			if err != nil {
				return err
			}
			list, err := s.restart(cmd.Context(), dryRun)
			if err != nil {
				return err
			}
			if len(list.Items) == 0 && s.output == "" {
				fmt.Fprintln(s.streams.ErrOut, noneFound("No pods need a restart", list.Namespace))
				return nil
			}
			return s.out().print("RestartList", list, list.table())
		},
	}
	cmd.Flags().StringVar(&dryRun, "dry-run", dryRun, "none, client (only list what would be rolled) or server (send the patches as a server-side dry run)")
	cmd.Flags().Lookup("dry-run").NoOptDefVal = dryRunClient
	return cmd
}

// restart rolls the workloads of the session's namespace that own
// uninjected pods.
func (s *session) restart(ctx context.Context, dryRun string) (*RestartList, error) {
	pods, err := s.uninjectedPods(ctx, s.namespace)
	if err != nil {
		return nil, err
	}
	list := &RestartList{Namespace: s.namespace, Items: []RestartItem{}}
	byWorkload := map[Workload]int{}
	for _, p := range pods.Items {
		w := p.Workload
		if w.Kind == "" {
			w = Workload{Kind: "Pod", Name: p.Name} // each bare pod on its own
		}
		i, ok := byWorkload[w]
		if !ok {
			i = len(list.Items)
			byWorkload[w] = i
			list.Items = append(list.Items, RestartItem{Workload: w})
		}
		list.Items[i].Pods = append(list.Items[i].Pods, p.Name)
	}
	slices.SortFunc(list.Items, func(a, b RestartItem) int { return strings.Compare(a.Workload.String(), b.Workload.String()) })
	at := s.now().UTC().Format(time.RFC3339)
	for i := range list.Items {
		item := &list.Items[i]
		item.Action, item.Note, err = s.roll(ctx, item.Workload, at, dryRun)
		if err != nil {
			return nil, err
		}
	}
	return list, nil
}

// roll restarts one workload, or says why it is not restarted.
func (s *session) roll(ctx context.Context, w Workload, at, dryRun string) (action, note string, err error) {
	switch w.Kind {
	case kindDeployment, kindStatefulSet, kindDaemonSet:
		note, err = s.rollNote(ctx, w)
	case "Pod":
		return ActionSkipped, "no controller: delete and create the pod again", nil
	case kindJob, kindCronJob:
		return ActionSkipped, "runs to completion: its next pods are injected", nil
	default:
		return ActionSkipped, "not rolled by this command: delete its pods so that its " + w.Kind + " creates them again", nil
	}
	switch {
	case err != nil:
		return "", "", err
	case note == notePaused:
		return ActionSkipped, note, nil
	case dryRun == dryRunClient:
		return ActionWouldRestart, note, nil
	}
	opts := metav1.PatchOptions{FieldManager: fieldManager}
	action = ActionRestarted
	if dryRun == dryRunServer {
		opts.DryRun = []string{metav1.DryRunAll}
		action = ActionRestartChecked
	}
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{restartedAtAnnotation: at},
	}}}})
	if err != nil {
		return "", "", err
	}
	apps := s.client.AppsV1()
	switch w.Kind {
	case kindDeployment:
		_, err = apps.Deployments(s.namespace).Patch(ctx, w.Name, types.StrategicMergePatchType, patch, opts)
	case kindStatefulSet:
		_, err = apps.StatefulSets(s.namespace).Patch(ctx, w.Name, types.StrategicMergePatchType, patch, opts)
	case kindDaemonSet:
		_, err = apps.DaemonSets(s.namespace).Patch(ctx, w.Name, types.StrategicMergePatchType, patch, opts)
	}
	if err != nil {
		return "", "", fmt.Errorf("restart %s: %w", w, err)
	}
	return action, note, nil
}

// Notes on workloads the restart patch cannot roll (as is).
const (
	notePaused   = "paused: `kubectl rollout resume` it first"
	noteOnDelete = "updateStrategy OnDelete: its pods are replaced only when deleted"
)

// rollNote reads a rollable workload and says what stands in the way of
// rolling it, "" when nothing does.
func (s *session) rollNote(ctx context.Context, w Workload) (string, error) {
	apps := s.client.AppsV1()
	get := metav1.GetOptions{}
	var err error
	switch w.Kind {
	case kindDeployment:
		var d *appsv1.Deployment
		if d, err = apps.Deployments(s.namespace).Get(ctx, w.Name, get); err == nil && d.Spec.Paused {
			return notePaused, nil
		}
	case kindStatefulSet:
		var ss *appsv1.StatefulSet
		if ss, err = apps.StatefulSets(s.namespace).Get(ctx, w.Name, get); err == nil && ss.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType {
			return noteOnDelete, nil
		}
	case kindDaemonSet:
		var ds *appsv1.DaemonSet
		if ds, err = apps.DaemonSets(s.namespace).Get(ctx, w.Name, get); err == nil && ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
			return noteOnDelete, nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", w, err)
	}
	return "", nil
}

func (l *RestartList) table() table {
	t := table{columns: []string{"Workload", "Pods", "Action", "Note"}}
	for _, item := range l.Items {
		t.add(item.Workload.String(), strings.Join(item.Pods, ","), item.Action, item.Note)
	}
	return t
}
