{{/* Pod security shared by the in-cluster dev dependencies; call with (dict "uid" 1000). */}}
{{- define "parley.dev.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A data volume: a claim template when persistence is on. Call with (dict "root" $ "component" "kafka" "size" "5Gi"). */}}
{{- define "parley.dev.volumeClaimTemplates" -}}
{{- if .root.Values.dev.inCluster.persistence.enabled }}
volumeClaimTemplates:
  - metadata:
      name: data
      labels:
        {{- include "parley.selectorLabels" . | nindent 8 }}
    spec:
      accessModes: [ReadWriteOnce]
      {{- with .root.Values.dev.inCluster.persistence.storageClass }}
      storageClassName: {{ . }}
      {{- end }}
      resources:
        requests:
          storage: {{ .size }}
{{- end }}
{{- end -}}

{{- define "parley.dev.dataVolume" -}}
{{- if not .Values.dev.inCluster.persistence.enabled }}
- name: data
  emptyDir: {}
{{- end }}
{{- end -}}
