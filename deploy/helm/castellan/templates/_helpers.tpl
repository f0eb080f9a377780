{{/* Labels on every object, as the kustomize base sets them. */}}
{{- define "castellan.labels" -}}
app.kubernetes.io/part-of: castellan
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "castellan.caLabels" -}}
app.kubernetes.io/name: castellan-ca
app.kubernetes.io/component: ca
{{- end }}

{{- define "castellan.agentLabels" -}}
app.kubernetes.io/name: castellan-agent
app.kubernetes.io/component: agent
{{- end }}

{{- define "castellan.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The Secret holding the CA material. */}}
{{- define "castellan.secretName" -}}
{{ if eq .Values.material.mode "cacerts" }}{{ .Values.material.cacerts.secretName }}{{ else }}{{ .Values.material.secretName }}{{ end }}
{{- end }}

{{- define "castellan.checkValues" -}}
{{- if not (has .Values.material.mode (list "secret" "cacerts" "vault")) }}{{ fail "material.mode must be secret, cacerts or vault" }}{{ end }}
{{- if not (has .Values.agent.mode (list "node" "perPod")) }}{{ fail "agent.mode must be node or perPod" }}{{ end }}
{{- if and (eq .Values.material.mode "vault") (not .Values.material.vault.addr) }}{{ fail "material.mode=vault needs material.vault.addr" }}{{ end }}
{{- range .Values.ca.remoteClusters }}{{ if not (and .id .secretName) }}{{ fail "each of ca.remoteClusters needs an id and a secretName" }}{{ end }}{{ end }}
{{- end }}
