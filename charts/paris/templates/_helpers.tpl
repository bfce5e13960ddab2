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

{{/* The operator's settings (paris.config.OperatorSettings), passed as YAML in PARIS_OPERATOR_CONFIG. */}}
{{- define "paris.settings" -}}
trainerImage: {{ printf "%s:%s" .Values.trainerImage.repository (default .Chart.AppVersion .Values.trainerImage.tag) | quote }}
s3Endpoint: {{ .Values.storage.endpoint | quote }}
credentialsSecret: {{ .Values.storage.credentialsSecret | quote }}
poolLabel: {{ .Values.pools.label | quote }}
pollSeconds: {{ .Values.pollSeconds }}
pools:
{{- if .Values.pools.defaults }}
{{ toYaml .Values.pools.defaults | indent 2 }}
{{- else }} {}
{{- end }}
{{- end -}}
