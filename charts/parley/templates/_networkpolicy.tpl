{{/* Egress and ingress rules of the NetworkPolicies. A rule without "to"/"from" allows any peer on its ports. */}}

{{/* A rule on TCP ports to the given peers. Call with (dict "ports" (list 443) "to" $peers). */}}
{{- define "parley.np.egressRule" -}}
- ports:
    {{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "parley.np.dns" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  {{- with .Values.networkPolicy.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Egress to an in-cluster dev dependency, or to the external one on its ports. Call with (dict "root" $ "dep" "kafka" "ports" (list 9092) "devPorts" (list 9092)). */}}
{{- define "parley.np.dependency" -}}
{{- if .root.Values.dev.inCluster.enabled -}}
{{- $to := list (dict "podSelector" (dict "matchLabels" (include "parley.selectorLabels" (dict "root" .root "component" .dep) | fromYaml))) -}}
{{- include "parley.np.egressRule" (dict "ports" .devPorts "to" $to) -}}
{{- else -}}
{{- $np := index .root.Values.networkPolicy .dep -}}
{{- include "parley.np.egressRule" (dict "ports" ($np.ports | default .ports) "to" $np.to) -}}
{{- end -}}
{{- end -}}

{{- define "parley.np.kafka" -}}
{{- $ports := include "parley.portsOf" (include "parley.kafka.bootstrapServers" .) | fromYamlArray -}}
{{- include "parley.np.dependency" (dict "root" . "dep" "kafka" "ports" $ports "devPorts" (list 9092)) -}}
{{- end -}}

{{- define "parley.np.mongodb" -}}
{{- include "parley.np.dependency" (dict "root" . "dep" "mongodb" "ports" (list 27017) "devPorts" (list 27017)) -}}
{{- end -}}

{{- define "parley.np.qdrant" -}}
{{- $addrs := printf "%s,%s" (include "parley.qdrant.addr" .) (include "parley.qdrant.grpcAddr" .) -}}
{{- $ports := include "parley.portsOf" $addrs | fromYamlArray -}}
{{- include "parley.np.dependency" (dict "root" . "dep" "qdrant" "ports" $ports "devPorts" (list 6333 6334)) -}}
{{- end -}}

{{- define "parley.np.otel" -}}
{{- if .Values.otel.endpoint -}}
{{- include "parley.np.egressRule" .Values.networkPolicy.otel -}}
{{- end -}}
{{- end -}}

{{- define "parley.np.modelDownloads" -}}
{{- if .Values.networkPolicy.modelDownloads.enabled -}}
{{- include "parley.np.egressRule" .Values.networkPolicy.modelDownloads -}}
{{- end -}}
{{- end -}}

{{/* Ingress from Prometheus to a metrics port. Call with (dict "root" $ "port" 9101). */}}
{{- define "parley.np.prometheus" -}}
- ports:
    - {port: {{ .port }}, protocol: TCP}
  from:
    {{- toYaml .root.Values.networkPolicy.prometheusFrom | nindent 4 }}
{{- end -}}

{{/* Ingress from the gateway pods to a gRPC port. */}}
{{- define "parley.np.fromGateway" -}}
- ports:
    - {port: {{ .port }}, protocol: TCP}
  from:
    - podSelector:
        matchLabels:
          {{- include "parley.selectorLabels" (dict "root" .root "component" "gateway") | nindent 10 }}
{{- end -}}

{{/* Egress to another Parley service. */}}
{{- define "parley.np.toPeer" -}}
- ports:
    - {port: {{ .port }}, protocol: TCP}
  to:
    - podSelector:
        matchLabels:
          {{- include "parley.selectorLabels" (dict "root" .root "component" .component) | nindent 10 }}
{{- end -}}
