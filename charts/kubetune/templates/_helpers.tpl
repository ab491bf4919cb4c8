{{/* Names and labels, as `helm create` and KubeRay's charts make them. */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-kubetune, or the release name when it already contains the chart name. */}}
{{- define "kubetune.fullname" -}}
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

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "operator"). */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" .ctx }}
{{ include "kubetune.selectorLabels" . }}
{{- if .ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubetune.operatorName" -}}
{{- printf "%s-operator" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubetune.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "kubetune.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "kubetune.trialImage" -}}
{{- printf "%s:%s" .Values.experiments.trialImage.repository (default .Chart.AppVersion .Values.experiments.trialImage.tag) }}
{{- end }}

{{/* The namespaces that run experiments: driverRBAC.namespaces, else watchNamespaces, else the
     release's namespace. A JSON list (fromJsonArray it). */}}
{{- define "kubetune.experimentNamespaces" -}}
{{- $ns := .Values.driverRBAC.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- $ns | uniq | toJson }}
{{- end }}
