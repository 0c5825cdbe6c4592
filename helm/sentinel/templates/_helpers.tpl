{{/* The release's base name: the release name when it holds "sentinel", otherwise <release>-sentinel. */}}
{{- define "sentinel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; selectors use sentinel.selector. */}}
{{- define "sentinel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of a component: call with (list $ "node") or (list $ "router"). */}}
{{- define "sentinel.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image reference. */}}
{{- define "sentinel.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* gRPC address of node n: (list $ n). */}}
{{- define "sentinel.nodeAddress" -}}
{{- $name := include "sentinel.fullname" (index . 0) -}}
{{ printf "%s-%d.%s:7400" $name (index . 1) $name }}
{{- end -}}

{{/* Pod-level settings shared by nodes and routers. */}}
{{- define "sentinel.podSecurity" -}}
# Service links would put variables named SENTINEL_*_SERVICE_HOST into the containers,
# which the configuration loader would warn about as ignored at every start.
enableServiceLinks: false
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  fsGroupChangePolicy: OnRootMismatch
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container-level security shared by every container. */}}
{{- define "sentinel.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* Topology spread over zones and anti-affinity over machines: (list $ component mode). */}}
{{- define "sentinel.spread" -}}
{{- $ := index . 0 -}}
{{- $component := index . 1 -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "sentinel.selector" (list $ $component) | nindent 8 }}
affinity:
  podAntiAffinity:
    {{- if eq (index . 2) "required" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "sentinel.selector" (list $ $component) | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "sentinel.selector" (list $ $component) | nindent 14 }}
    {{- end }}
{{- end -}}

{{/* The cluster transport's variables: nothing with TLS, insecure mode without. */}}
{{- define "sentinel.transportEnv" -}}
{{- if not .Values.tls.enabled }}
- name: SENTINEL_SECURITY__TLS
  value: "null"
- name: SENTINEL_SECURITY__INSECURE
  value: "true"
{{- end }}
{{- end -}}

{{/* A variable from key (index . 2) of the release's Secret, named (index . 1): (list $ name key optional). */}}
{{- define "sentinel.secretEnv" -}}
{{- $ := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.secrets.existingSecret }}
      key: {{ index . 2 }}
      {{- if index . 3 }}
      optional: true
      {{- end }}
{{- end -}}

{{/* Volumes and mounts shared by nodes and routers: (list $ configMap tlsSecret). */}}
{{- define "sentinel.volumes" -}}
{{- $ := index . 0 -}}
- name: config
  configMap:
    name: {{ index . 1 }}
{{- if $.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ index . 2 }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/* The mounts of sentinel.volumes. */}}
{{- define "sentinel.mounts" -}}
- name: config
  mountPath: /etc/sentinel/config
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/sentinel/tls
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}
