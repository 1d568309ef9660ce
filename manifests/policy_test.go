package manifests

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// caBundlePolicy names the ValidatingAdmissionPolicy (and its binding) that
// lets the webhook change only the caBundle of its configuration.
const caBundlePolicy = "localdns-webhook-cabundle-only"

// webhookIdentity is the user the webhook's pods act as.
var webhookIdentity = "system:serviceaccount:" + namespace + ":localdns-webhook"

// checkCABundleOnlyPolicy: with self-managed TLS (the webhook may update its
// configuration) the policy and its binding exist, deny, match that identity
// and that one configuration, and compare every field of a webhook entry but
// the caBundle; with cert-manager (no such grant) neither is installed.
func checkCABundleOnlyPolicy(t *testing.T, m manifest, in install, configName string) {
	t.Helper()
	p := installedPolicy(t, m, caBundlePolicy, !in.certManager, "with self-managed TLS only (cert-manager TLS: the webhook cannot write its configuration)")
	if p == nil {
		return
	}
	rules := p.MatchConstraints.ResourceRules
	if len(rules) != 1 || !slices.Equal(rules[0].ResourceNames, []string{configName}) ||
		!slices.Equal(rules[0].Resources, []string{"mutatingwebhookconfigurations"}) ||
		!slices.Contains(rules[0].Operations, admissionregistrationv1.Update) {
		t.Errorf("match constraints %+v: want UPDATE of mutatingwebhookconfigurations/%s", rules, configName)
	}
	want := fmt.Sprintf("request.userInfo.username == %q", webhookIdentity)
	if len(p.MatchConditions) != 1 || p.MatchConditions[0].Expression != want {
		t.Errorf("match conditions %+v: want exactly %s", p.MatchConditions, want)
	}
	var expressions strings.Builder
	for _, v := range p.Validations {
		expressions.WriteString(v.Expression + "\n")
	}
	for _, field := range jsonFields(reflect.TypeFor[admissionregistrationv1.MutatingWebhook]()) {
		compared := "o.?" + field + " == w.?" + field
		switch field {
		case "name":
			compared = "o.name == w.name"
		case "clientConfig":
			for _, cc := range jsonFields(reflect.TypeFor[admissionregistrationv1.WebhookClientConfig]()) {
				if cc == "caBundle" {
					continue
				}
				if c := "o.clientConfig.?" + cc + " == w.clientConfig.?" + cc; !strings.Contains(expressions.String(), c) {
					t.Errorf("the policy does not compare webhooks[].clientConfig.%s (%s)", cc, c)
				}
			}
			continue
		}
		if !strings.Contains(expressions.String(), compared) {
			t.Errorf("the policy does not compare webhooks[].%s (%s)", field, compared)
		}
	}
}

// installedPolicy checks that the ValidatingAdmissionPolicy name and its
// binding are rendered exactly when want says (when says when, for the
// message); rendered, that the binding denies with no params and no
// narrower match, and that the policy fails closed. It returns the policy's
// spec, nil when it is not rendered.
func installedPolicy(t *testing.T, m manifest, name string, want bool, when string) *admissionregistrationv1.ValidatingAdmissionPolicySpec {
	t.Helper()
	var policy admissionregistrationv1.ValidatingAdmissionPolicy
	var binding admissionregistrationv1.ValidatingAdmissionPolicyBinding
	hasPolicy := m.get("ValidatingAdmissionPolicy", name, &policy)
	hasBinding := m.get("ValidatingAdmissionPolicyBinding", name, &binding)
	if !want {
		if hasPolicy || hasBinding {
			t.Errorf("policy %s rendered (%v, binding %v); want it %s", name, hasPolicy, hasBinding, when)
		}
		return nil
	}
	if !hasPolicy || !hasBinding {
		t.Fatalf("policy %s missing (%v, binding %v); want it %s", name, hasPolicy, hasBinding, when)
	}
	b := binding.Spec
	if b.PolicyName != policy.Name || !slices.Equal(b.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) ||
		b.ParamRef != nil || b.MatchResources != nil {
		t.Errorf("binding %+v: want the policy, Deny, no params, no narrower match", b)
	}
	if p := policy.Spec.FailurePolicy; p == nil || *p != admissionregistrationv1.Fail {
		t.Errorf("policy %s: failurePolicy %v, want Fail", name, p)
	}
	return &policy.Spec
}

// jsonFields lists the JSON names of a struct type's fields.
func jsonFields(typ reflect.Type) []string {
	var names []string
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}

// checkPolicyEnforced changes the installed configuration as the webhook's
// identity (impersonation) through the real API server: a caBundle change
// passes; a change of anything else is denied by the policy, and is allowed
// to an administrator. The denied changes are server-side dry runs, so a
// policy that lets one through changes nothing for the next case.
func checkPolicyEnforced(t *testing.T, c cluster) {
	t.Helper()
	patch := func(as, ops string, dryRun bool) error {
		args := []string{"patch", "mutatingwebhookconfiguration", "localdns-webhook", "--type=json", "-p", ops}
		if as != "" {
			args = append(args, "--as", as)
		}
		if dryRun {
			args = append(args, "--dry-run=server")
		}
		_, err := c.kubectl(nil, args...)
		return err
	}
	denied := func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+caBundlePolicy+"'")
	}
	forbidden := []struct{ what, ops string }{
		{"rules", `[{"op":"replace","path":"/webhooks/0/rules/0/operations","value":["CREATE","UPDATE"]}]`},
		{"failurePolicy", `[{"op":"replace","path":"/webhooks/1/failurePolicy","value":"Fail"}]`},
		{"namespaceSelector", `[{"op":"remove","path":"/webhooks/0/namespaceSelector/matchExpressions/1"}]`},
		{"objectSelector", `[{"op":"remove","path":"/webhooks/1/objectSelector"}]`},
		{"service", `[{"op":"replace","path":"/webhooks/0/clientConfig/service/name","value":"elsewhere"}]`},
		{"timeoutSeconds", `[{"op":"replace","path":"/webhooks/0/timeoutSeconds","value":30}]`},
		{"an entry removed", `[{"op":"remove","path":"/webhooks/1"}]`},
		{"labels", `[{"op":"add","path":"/metadata/labels/extra","value":"x"}]`},
		{"caBundle and rules at once", `[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"Zm9v"},` +
			`{"op":"replace","path":"/webhooks/0/rules/0/resources","value":["pods","services"]}]`},
	}
	// The API server enforces a new policy once it has loaded it: wait for
	// the first denial (nothing is persisted meanwhile).
	var last error
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		last = patch(webhookIdentity, forbidden[0].ops, true)
		return denied(last), nil
	})
	if err != nil {
		t.Fatalf("the policy never denied a change of the rules: %v (last: %v)", err, last)
	}
	if err := patch(webhookIdentity, `[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"Y2EtYnVuZGxl"},`+
		`{"op":"add","path":"/webhooks/1/clientConfig/caBundle","value":"Y2EtYnVuZGxl"}]`, false); err != nil {
		t.Errorf("the webhook's caBundle update was refused: %v", err)
	}
	for _, f := range forbidden {
		if err := patch(webhookIdentity, f.ops, true); !denied(err) {
			t.Errorf("%s changed by the webhook's identity: want a denial by the policy, got %v", f.what, err)
		}
		if err := patch("", f.ops, true); err != nil {
			t.Errorf("%s changed by an administrator: %v", f.what, err)
		}
	}
}
