{{/* Name of the release's objects: "<release>-kubetasks" unless the release is already called that. */}}
{{- define "kubetasks.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubetasks.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetasks
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubetasks.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubetasks.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kubetasks.databaseSecret" -}}
{{- if .Values.database.existingSecret -}}
{{ .Values.database.existingSecret }}
{{- else -}}
{{ include "kubetasks.fullname" . }}-database
{{- end -}}
{{- end -}}

{{- define "kubetasks.databaseKey" -}}
{{- if .Values.database.existingSecret -}}
{{ .Values.database.existingSecretKey }}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{/* Environment shared by the operator and the workers. */}}
{{- define "kubetasks.env" -}}
- name: KUBETASKS_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kubetasks.databaseSecret" . }}
      key: {{ include "kubetasks.databaseKey" . }}
- name: KUBETASKS_WORKER__MODULES
  value: {{ .Values.modules | toJson | quote }}
{{- end -}}

{{- define "kubetasks.migrateInit" -}}
{{- if .Values.migrations.initContainer }}
initContainers:
  - name: migrate
    image: {{ include "kubetasks.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: [kubetasks, migrate]
    env:
      {{- include "kubetasks.env" . | nindent 6 }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    {{- with .Values.extraVolumeMounts }}
    volumeMounts:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
{{- end -}}
