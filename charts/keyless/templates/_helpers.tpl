{{/*
Names. Resource names are capped at 63 characters because some fields (labels, Service names) must be DNS labels.
*/}}
{{- define "keyless.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyless.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keyless.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the controller pods. Never change them: a Deployment's selector is immutable. */}}
{{- define "keyless.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "keyless.labels" -}}
helm.sh/chart: {{ include "keyless.chart" . }}
{{ include "keyless.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyless
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount name: the federated credential subject depends on it, so it is predictable. */}}
{{- define "keyless.serviceAccountName" -}}
{{- default (include "keyless.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The subject Azure must trust: register it as the federated credential of the operator identity. */}}
{{- define "keyless.federatedSubject" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "keyless.serviceAccountName" .) }}
{{- end }}

{{/*
The instance id is required: the old default, <namespace>-<release>, is the same on every cluster where
the chart is installed the same way, and two clusters with one id prune each other's grants. An install
that ran with the default must set exactly that value, because a new id orphans every grant it made.
*/}}
{{- define "keyless.instanceId" -}}
{{- $previous := printf "%s-%s" .Release.Namespace .Release.Name -}}
{{- required (printf "controller.instanceId is required: set it to an id unique to this cluster that never changes (e.g. --set controller.instanceId=aks-prod-westeurope). Upgrading an install that ran without it? Set the id it has run with so far, --set controller.instanceId=%s (<namespace>-<release>): a new id orphans every grant the old one made." $previous) .Values.controller.instanceId }}
{{- end }}

{{- define "keyless.leaseName" -}}
{{- default (include "keyless.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "keyless.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express (they relate two values). Included by the Deployment so they run on
every render.
*/}}
{{- define "keyless.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a leader, every replica would write to Azure" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.service.enabled=true: a ServiceMonitor scrapes through the Service" }}
{{- end }}
{{- end }}
