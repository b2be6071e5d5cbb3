{{/* The release's full name: the release name, with "kubenat" unless it contains it. */}}
{{- define "kubenat.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubenat.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubenat.labels" -}}
{{ include "kubenat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{- define "kubenat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubenat.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The port of a host:port bind address, or "" for an empty address. */}}
{{- define "kubenat.port" -}}
{{- if . -}}{{- splitList ":" . | last -}}{{- end -}}
{{- end -}}

{{/* The KubenatConfiguration: config, with the masquerade file when an ip-masq-agent ConfigMap is mounted. */}}
{{- define "kubenat.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $conntrack := get $config "conntrack" | default dict -}}
{{- if not (hasKey $conntrack "procfs") -}}
{{- $_ := set $conntrack "procfs" "/host/proc" -}}
{{- $_ := set $config "conntrack" $conntrack -}}
{{- end -}}
{{- if .Values.ipMasqAgentConfigMap -}}
{{- $masq := get $config "masquerade" | default dict -}}
{{- $_ := set $masq "configFile" "/etc/config/ip-masq-agent/config" -}}
{{- $_ := set $config "masquerade" $masq -}}
{{- end -}}
apiVersion: kubenat.io/v1alpha1
kind: KubenatConfiguration
{{ toYaml $config }}
{{- end -}}
