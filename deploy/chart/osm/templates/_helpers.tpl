{{/* Labels every object of the release carries. */}}
{{- define "osm.labels" -}}
app.kubernetes.io/name: openservicemesh.io
app.kubernetes.io/instance: {{ .Values.meshName }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selects the controller's pods. */}}
{{- define "osm.selector" -}}
app: osm-controller
app.kubernetes.io/instance: {{ .Values.meshName }}
{{- end -}}

{{- define "osm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
