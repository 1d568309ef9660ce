{{/*
localdns.image: the reference of one of the three images, by name
(nodecache, webhook, stub); the tag defaults to the chart's appVersion.
*/}}
{{- define "localdns.image" -}}
{{- $image := index .root.Values.images .name -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/*
localdns.listen: the node cache's DNS address, ip:53 ([ip]:53 for IPv6). The
node cache and its cleanup take it from here, so they always agree.
*/}}
{{- define "localdns.listen" -}}
{{- if contains ":" .Values.localIP -}}
[{{ .Values.localIP }}]:53
{{- else -}}
{{ .Values.localIP }}:53
{{- end -}}
{{- end -}}

{{/*
localdns.nodeSetupArgs: the flags that say what the node cache sets up on a
node; the cleanup DaemonSet passes the same ones to remove exactly that.
*/}}
{{- define "localdns.nodeSetupArgs" -}}
- --listen={{ include "localdns.listen" . }}
- --interface-name={{ .Values.nodecache.interfaceName }}
- --iptables-mode={{ .Values.nodecache.iptablesMode }}
{{- end -}}

{{/*
localdns.resolverArgs: the flags that say how the node cache resolves, which
its standby passes too (with the same --listen), so that whichever of the two
serves the node answers the same way; and the handover socket that links
them (empty: no standby, nothing to link to).
*/}}
{{- define "localdns.resolverArgs" -}}
- --cluster-domain={{ .Values.clusterDomain }}
{{- if .Values.nodecache.upstream }}
- --upstream={{ join "," .Values.nodecache.upstream }}
{{- else }}
# --upstream omitted: discovered from Service kube-system/kube-dns.
{{- end }}
- --stale-max={{ .Values.nodecache.staleMax }}
- --handover-socket={{ if .Values.nodecache.standby.enabled }}localdns-nodecache-handover{{ end }}
{{- end -}}

{{/*
localdns.nodeTolerations: the tolerations of the node cache, its standby and
the cleanup, which run on the same nodes: the configured ones, and with the
startup taint on, that taint (the node cache must start on a node carrying
the taint it removes).
*/}}
{{- define "localdns.nodeTolerations" -}}
{{- $tolerations := .Values.nodecache.tolerations }}
{{- if .Values.nodecache.startupTaint.enabled }}
{{- $tolerations = append $tolerations (dict "key" .Values.nodecache.startupTaint.key "operator" "Exists") }}
{{- end }}
{{- with $tolerations -}}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
localdns.linuxNodeSelector: a pod's node selector, the given one with
kubernetes.io/os=linux always: localdns's images are Linux images, nothing
serves the node cache's address on Windows nodes, and the webhook leaves
Windows pods alone.
*/}}
{{- define "localdns.linuxNodeSelector" -}}
{{- toYaml (merge (dict "kubernetes.io/os" "linux") .) -}}
{{- end -}}
