{{/*
The release's base name: the release name, unless it does not already hold
the chart name. Kept to 63 characters minus room for the longest suffix.
*/}}
{{- define "ocfs2-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ocfs2-csi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select one component's pods; never change them on upgrade. */}}
{{- define "ocfs2-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* The standard label set. Call with (dict "root" $ "component" "controller"). */}}
{{- define "ocfs2-csi.labels" -}}
{{ include "ocfs2-csi.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: ocfs2-csi
helm.sh/chart: {{ include "ocfs2-csi.chart" .root }}
{{- end -}}

{{/*
An image reference: REGISTRY/REPOSITORY:TAG, where REGISTRY is the image's
own registry, else .Values.imageRegistry (a mirror of everything), else the
image's home ("home", e.g. .Values.sidecars.registry), and is left out when
all are empty. TAG defaults to the chart's appVersion.
Call with (dict "root" $ "image" .Values.image [ "home" REGISTRY ]).
*/}}
{{- define "ocfs2-csi.image" -}}
{{- $registry := .image.registry | default .root.Values.imageRegistry | default (.home | default "") | trimSuffix "/" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ocfs2-csi.controllerServiceAccount" -}}
{{- printf "%s-controller" (include "ocfs2-csi.fullname" .) -}}
{{- end -}}

{{- define "ocfs2-csi.nodeServiceAccount" -}}
{{- printf "%s-node" (include "ocfs2-csi.fullname" .) -}}
{{- end -}}

{{/* The plugin's socket directory on the host. */}}
{{- define "ocfs2-csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (.Values.kubeletDir | trimSuffix "/") .Values.driverName -}}
{{- end -}}

{{/* The LUN list as the driver reads it from OCFS2_CSI_LUNS. */}}
{{- define "ocfs2-csi.luns" -}}
{{- join "," .Values.luns -}}
{{- end -}}

{{/* The members file, one `NAME NUMBER ADDRESS[:PORT]` per line. */}}
{{- define "ocfs2-csi.membersFile" -}}
# Rendered by the ocfs2-csi chart from values.membership.static.
# NAME NUMBER ADDRESS[:PORT]
{{- range .Values.membership.static }}
{{ .name }} {{ .number | int }} {{ .address }}
{{- end }}
{{- end -}}

{{/*
The nodeSelector of a workload that opens the LUNs: .Values.sanNodeLabel
(unless its key is empty) and the workload's own selector ("own"), which
wins for the same key. YAML of a map, "{}" when empty.
Call with (dict "root" $ "own" .Values.node.nodeSelector).
*/}}
{{- define "ocfs2-csi.nodeSelector" -}}
{{- $selector := dict -}}
{{- with .root.Values.sanNodeLabel -}}
{{- if .key -}}
{{- $_ := set $selector .key (toString .value) -}}
{{- end -}}
{{- end -}}
{{- toYaml (merge (deepCopy (.own | default dict)) $selector) -}}
{{- end -}}

{{/*
The name of the membership Lease of o2cb node NUMBER, as the node plugin
makes it (src/k8s/members.rs, lease_name): the cluster name lowercased,
'_' turned into '-', leading and trailing '-' trimmed.
Call with (list $ NUMBER).
*/}}
{{- define "ocfs2-csi.leaseName" -}}
{{- $root := index . 0 -}}
{{- printf "ocfs2-%s-n%d" ($root.Values.clusterName | lower | replace "_" "-" | trimAll "-") (index . 1 | int) -}}
{{- end -}}

{{/*
The o2cb timeouts of o2cb.profile, as a dict: default (o2cb's own), fast, or
custom (the four values as given). Must match src/cluster/config.rs
(Timeouts::default, Timeouts::FAST).
*/}}
{{- define "ocfs2-csi.o2cbTimeouts" -}}
{{- $o := .Values.o2cb -}}
{{- $default := dict "deadThreshold" 31 "idleTimeoutMs" 30000 "keepaliveDelayMs" 2000 "reconnectDelayMs" 2000 -}}
{{- $profiles := dict "default" $default "fast" (dict "deadThreshold" 16 "idleTimeoutMs" 15000 "keepaliveDelayMs" 2000 "reconnectDelayMs" 2000) -}}
{{- if eq $o.profile "custom" -}}
{{- toJson (dict "deadThreshold" $o.deadThreshold "idleTimeoutMs" $o.idleTimeoutMs "keepaliveDelayMs" $o.keepaliveDelayMs "reconnectDelayMs" $o.reconnectDelayMs) -}}
{{- else if hasKey $profiles $o.profile -}}
{{- range $k, $v := $default -}}
{{- if ne (int (index $o $k)) (int $v) -}}
{{- fail (printf "o2cb.%s is %v, but o2cb.profile is %s, whose timeouts the chart sets: use o2cb.profile custom for timeouts of your own" $k (index $o $k) $o.profile) -}}
{{- end -}}
{{- end -}}
{{- toJson (index $profiles $o.profile) -}}
{{- else -}}
{{- fail (printf "o2cb.profile %q is none of default, fast, custom" $o.profile) -}}
{{- end -}}
{{- end -}}
