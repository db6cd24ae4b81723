{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-parley", or the release name alone when it already contains the chart name. */}}
{{- define "parley.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "parley.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects. Call with (dict "root" $ "component" "gateway"). */}}
{{- define "parley.componentName" -}}
{{- printf "%s-%s" (include "parley.fullname" .root) .component -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------- */}}

{{- define "parley.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "parley.labels" -}}
{{ include "parley.selectorLabels" . }}
app.kubernetes.io/part-of: parley
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Images ------------------------------------------------------------------------------- */}}

{{/* A service image: [registry/]repository:tag[@digest]. Call with (dict "root" $ "image" .Values.gateway.image). */}}
{{- define "parley.image" -}}
{{- $registry := .root.Values.image.registry | trimSuffix "/" -}}
{{- $repository := .image.repository -}}
{{- if $registry -}}{{- $repository = printf "%s/%s" $registry $repository -}}{{- end -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository (toString $tag) -}}
{{- with .image.digest -}}@{{ . }}{{- end -}}
{{- end -}}

{{/* Third-party images (Kafka, MongoDB, Qdrant): repository:tag as given. */}}
{{- define "parley.thirdPartyImage" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* Addresses ---------------------------------------------------------------------------- */}}

{{- define "parley.kafka.bootstrapServers" -}}
{{- if .Values.dev.inCluster.enabled -}}
{{- printf "%s.%s.svc:9092" (include "parley.componentName" (dict "root" . "component" "kafka")) .Release.Namespace -}}
{{- else -}}
{{- required "kafka.bootstrapServers is required: the Kafka bootstrap servers, host:port[,host:port]" .Values.kafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{- define "parley.qdrant.addr" -}}
{{- if .Values.dev.inCluster.enabled -}}
{{- printf "%s:6333" (include "parley.componentName" (dict "root" . "component" "qdrant")) -}}
{{- else -}}
{{- required "qdrant.addr is required: the Qdrant HTTP address, host:port" .Values.qdrant.addr -}}
{{- end -}}
{{- end -}}

{{/* Qdrant's gRPC API (the cache's lookups and stores): qdrant.grpcAddr, or addr's host on 6334. */}}
{{- define "parley.qdrant.grpcAddr" -}}
{{- if .Values.dev.inCluster.enabled -}}
{{- printf "%s:6334" (include "parley.componentName" (dict "root" . "component" "qdrant")) -}}
{{- else if .Values.qdrant.grpcAddr -}}
{{- .Values.qdrant.grpcAddr -}}
{{- else -}}
{{- printf "%s:6334" (include "parley.qdrant.addr" . | splitList ":" | first) -}}
{{- end -}}
{{- end -}}

{{- define "parley.session.addr" -}}
{{- printf "%s:%v" (include "parley.componentName" (dict "root" . "component" "session")) .Values.session.grpcPort -}}
{{- end -}}

{{- define "parley.cache.addr" -}}
{{- printf "%s:%v" (include "parley.componentName" (dict "root" . "component" "cache")) .Values.cache.grpcPort -}}
{{- end -}}

{{/* The ports of a "host:port[,host:port]" list, as a YAML list of integers. */}}
{{- define "parley.portsOf" -}}
{{- $ports := list -}}
{{- range splitList "," . -}}
{{- $port := trim . | splitList ":" | last | atoi -}}
{{- if and (gt $port 0) (not (has $port $ports)) -}}{{- $ports = append $ports $port -}}{{- end -}}
{{- end -}}
{{- toYaml $ports -}}
{{- end -}}

{{/* Kafka topics: contract names, fixed by proto/parley/v1 and the services' code. */}}
{{- define "parley.topic.requests" -}}parley.completions.requests{{- end -}}
{{- define "parley.topic.results" -}}parley.completions.results{{- end -}}
{{- define "parley.topic.control" -}}parley.completions.control{{- end -}}
{{- define "parley.topic.dlq" -}}parley.completions.dlq{{- end -}}

{{/* Secrets ------------------------------------------------------------------------------ */}}

{{- define "parley.devSecretName" -}}
{{- printf "%s-dev-credentials" (include "parley.fullname" .) -}}
{{- end -}}

{{/* secretKeyRef of MONGODB_URI. */}}
{{- define "parley.mongodb.uriSecretRef" -}}
{{- if .Values.dev.inCluster.enabled -}}
name: {{ include "parley.devSecretName" . }}
key: mongodb-uri
{{- else -}}
name: {{ required "mongodb.uriSecret.name is required: an existing Secret holding the MongoDB URI" .Values.mongodb.uriSecret.name }}
key: {{ required "mongodb.uriSecret.key is required" .Values.mongodb.uriSecret.key }}
{{- end -}}
{{- end -}}

{{/* secretKeyRef of ADMIN_API_KEY. */}}
{{- define "parley.gateway.adminApiKeySecretRef" -}}
{{- if .Values.dev.inCluster.enabled -}}
name: {{ include "parley.devSecretName" . }}
key: admin-api-key
{{- else -}}
name: {{ required "gateway.adminApiKeySecret.name is required: an existing Secret holding the admin API key" .Values.gateway.adminApiKeySecret.name }}
key: {{ required "gateway.adminApiKeySecret.key is required" .Values.gateway.adminApiKeySecret.key }}
{{- end -}}
{{- end -}}

{{/* Pods --------------------------------------------------------------------------------- */}}

{{/* ConfigMap entries every service reads. Call with (dict "root" $ "component" "session"). */}}
{{- define "parley.commonConfig" -}}
ENVIRONMENT: {{ .root.Values.environment | quote }}
LOG_LEVEL: {{ .root.Values.logLevel | quote }}
OTEL_SERVICE_NAME: {{ printf "parley-%s" .component | quote }}
{{- with .root.Values.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
KAFKA_ADDR: {{ include "parley.kafka.bootstrapServers" .root | quote }}
{{- end -}}

{{/* Probe timings from values; call with (dict "handler" <handler yaml> "timings" <values>). */}}
{{- define "parley.probe" -}}
{{ .handler }}
{{- with .timings }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling and pod-level settings shared by the four services. Call with (dict "root" $ "component" "gateway" "values" .Values.gateway). */}}
{{- define "parley.podSpecCommon" -}}
serviceAccountName: {{ if .root.Values.serviceAccount.create }}{{ include "parley.componentName" . }}{{ else }}default{{ end }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "parley.podAnnotations" -}}
checksum/config: {{ include (printf "parley.config.%s" .component) .root | sha256sum }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}
