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
{{- if not (has .Values.bundleEndpoint.profile (list "https_spiffe" "https_web")) }}{{ fail "bundleEndpoint.profile must be https_spiffe or https_web" }}{{ end }}
{{- if and .Values.bundleEndpoint.enabled (eq .Values.bundleEndpoint.profile "https_web") (not .Values.bundleEndpoint.httpsWeb.secretName) }}{{ fail "bundleEndpoint.profile=https_web needs bundleEndpoint.httpsWeb.secretName" }}{{ end }}
{{- range .Values.federateWith }}
{{- if not (and .trustDomain .url (has .profile (list "https_spiffe" "https_web"))) }}{{ fail "each of federateWith needs a trustDomain, a url and a profile (https_spiffe or https_web)" }}{{ end }}
{{- if and (eq .profile "https_spiffe") (not (and .endpointSPIFFEID .configMap)) }}{{ fail "a federateWith entry of profile https_spiffe needs endpointSPIFFEID and configMap (holding bundle.json)" }}{{ end }}
{{- end }}
{{- end }}

{{/* --federate-with entries, ';' between them (CASTELLAN_FEDERATE_WITH);
the files they name are the ConfigMaps mounted at
/etc/castellan/federation/<index>. */}}
{{- define "castellan.federateWith" -}}
{{- $entries := list }}
{{- range $i, $f := .Values.federateWith }}
{{- $e := printf "%s=%s,%s" $f.trustDomain $f.url $f.profile }}
{{- if eq $f.profile "https_spiffe" }}
{{- $e = printf "%s,%s,bundle=/etc/castellan/federation/%d/bundle.json" $e $f.endpointSPIFFEID $i }}
{{- else if $f.configMap }}
{{- $e = printf "%s,roots=/etc/castellan/federation/%d/roots.pem" $e $i }}
{{- end }}
{{- $entries = append $entries $e }}
{{- end }}
{{- join ";" $entries }}
{{- end }}
