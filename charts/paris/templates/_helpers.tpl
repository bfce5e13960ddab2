{{/* Names and labels shared by the templates. */}}
{{- define "paris.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "paris.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "paris.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "paris.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "paris.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The chart's own object store (minio.enabled): names, labels, endpoint. */}}
{{- define "paris.minio.fullname" -}}
{{- printf "%s-minio" (include "paris.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paris.minio.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: object-store
{{- end -}}

{{- define "paris.minio.labels" -}}
{{ include "paris.minio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The default endpoint and credentials Secret of every resource: the chart's store when it
installs one, else the storage values. */}}
{{- define "paris.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s.%s.svc.cluster.local:9000" (include "paris.minio.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.storage.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "paris.credentialsSecret" -}}
{{- if and .Values.minio.enabled .Values.minio.existingSecret -}}
{{- .Values.minio.existingSecret -}}
{{- else -}}
{{- .Values.storage.credentialsSecret -}}
{{- end -}}
{{- end -}}

{{- define "paris.createSecret" -}}
{{- if or .Values.storage.createSecret (and .Values.minio.enabled (not .Values.minio.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{/* The operator's settings (paris.config.OperatorSettings), passed as YAML in PARIS_OPERATOR_CONFIG. */}}
{{- define "paris.settings" -}}
trainerImage: {{ printf "%s:%s" .Values.trainerImage.repository (default .Chart.AppVersion .Values.trainerImage.tag) | quote }}
s3Endpoint: {{ include "paris.s3Endpoint" . | quote }}
credentialsSecret: {{ include "paris.credentialsSecret" . | quote }}
{{- with .Values.storage.serveCredentialsSecret }}
serveCredentialsSecret: {{ . | quote }}
{{- end }}
poolLabel: {{ .Values.pools.label | quote }}
pollSeconds: {{ .Values.pollSeconds }}
ttlSecondsAfterFinished: {{ if kindIs "invalid" .Values.ttlSecondsAfterFinished }}null{{ else }}{{ int .Values.ttlSecondsAfterFinished }}{{ end }}
pools:
{{- if .Values.pools.defaults }}
{{ toYaml .Values.pools.defaults | indent 2 }}
{{- else }} {}
{{- end }}
{{- end -}}
