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


{{/* The workers' KUBETASKS_NOTIFICATIONS__* settings; only those given, so the rest keep the worker's defaults. */}}
{{- define "kubetasks.notificationsEnv" -}}
{{- $n := .Values.notifications -}}
{{- if not (has $n.smtp.security (list "starttls" "tls" "none")) -}}
{{- fail (printf "notifications.smtp.security: %q is not starttls, tls or none (use one of them)" (toString $n.smtp.security)) -}}
{{- end -}}
{{- $port := int $n.smtp.port -}}
{{- if or (lt $port 1) (gt $port 65535) -}}
{{- fail (printf "notifications.smtp.port: %v is not a port (use 1 to 65535, e.g. 587)" $n.smtp.port) -}}
{{- end -}}
{{- if and $n.smtp.existingSecret (not $n.smtp.passwordKey) -}}
{{- fail "notifications.smtp.passwordKey: empty while notifications.smtp.existingSecret is set (name the password's key)" -}}
{{- end -}}
- name: KUBETASKS_NOTIFICATIONS__ENABLED
  value: {{ $n.enabled | quote }}
{{- with $n.dashboardUrl }}
- name: KUBETASKS_NOTIFICATIONS__DASHBOARD_URL
  value: {{ . | quote }}
{{- end }}
{{- with $n.source }}
- name: KUBETASKS_NOTIFICATIONS__SOURCE
  value: {{ . | quote }}
{{- end }}
{{- with $n.smtp.host }}
- name: KUBETASKS_NOTIFICATIONS__SMTP_HOST
  value: {{ . | quote }}
{{- end }}
- name: KUBETASKS_NOTIFICATIONS__SMTP_PORT
  value: {{ $port | quote }}
- name: KUBETASKS_NOTIFICATIONS__SMTP_SECURITY
  value: {{ $n.smtp.security | quote }}
{{- with $n.smtp.from }}
- name: KUBETASKS_NOTIFICATIONS__SMTP_FROM
  value: {{ . | quote }}
{{- end }}
{{- if $n.smtp.existingSecret }}
{{- if $n.smtp.usernameKey }}
- name: KUBETASKS_NOTIFICATIONS__SMTP_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $n.smtp.existingSecret }}
      key: {{ $n.smtp.usernameKey }}
{{- end }}
- name: KUBETASKS_NOTIFICATIONS__SMTP_PASSWORD_FILE
  value: /etc/kubetasks/smtp/password
{{- end }}
{{- if $n.webhookSecrets.existingSecret }}
- name: KUBETASKS_NOTIFICATIONS__SECRETS_DIR
  value: /etc/kubetasks/webhook-secrets
{{- end }}
{{- end -}}

{{/* Mounts (and volumes, with "volumes") of the notification Secrets. */}}
{{- define "kubetasks.notificationsMounts" -}}
{{- $n := .Values.notifications -}}
{{- if $n.smtp.existingSecret }}
- {name: smtp-credentials, mountPath: /etc/kubetasks/smtp, readOnly: true}
{{- end }}
{{- if $n.webhookSecrets.existingSecret }}
- {name: webhook-secrets, mountPath: /etc/kubetasks/webhook-secrets, readOnly: true}
{{- end }}
{{- end -}}

{{- define "kubetasks.notificationsVolumes" -}}
{{- $n := .Values.notifications -}}
{{- if $n.smtp.existingSecret }}
- name: smtp-credentials
  secret:
    secretName: {{ $n.smtp.existingSecret }}
    items:
      - {key: {{ $n.smtp.passwordKey }}, path: password}
{{- end }}
{{- if $n.webhookSecrets.existingSecret }}
- name: webhook-secrets
  secret:
    secretName: {{ $n.webhookSecrets.existingSecret }}
{{- end }}
{{- end -}}
