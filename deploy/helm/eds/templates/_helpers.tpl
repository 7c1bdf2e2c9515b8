{{/*
Names. Every object is <fullname> or <fullname>-<suffix>. The longest suffix
is "-controller-metrics" (19) on a Service, whose name is a DNS label of at
most 63 characters: hence at most 44 for <fullname>. When the release name
must be cut, it is cut before "-<name>", so the name always ends in it.
*/}}
{{- define "eds.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eds.fullname" -}}
{{- $max := 44 -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc $max | trimSuffix "-" }}
{{- else if contains $name .Release.Name -}}
{{- .Release.Name | trunc $max | trimSuffix "-" }}
{{- else if lt (len $name) (sub $max 1 | int) -}}
{{- $room := sub $max (add (len $name) 1) | int -}}
{{- printf "%s-%s" (.Release.Name | trunc $room | trimSuffix "-") $name }}
{{- else -}}
{{- $name | trunc $max | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "eds.controller.name" -}}{{ include "eds.fullname" . }}-controller{{- end }}
{{- define "eds.scaler.name" -}}{{ include "eds.fullname" . }}-scaler{{- end }}

{{/* The address the controller writes into every ScaledObject's trigger. */}}
{{- define "eds.scaler.address" -}}
{{ include "eds.scaler.name" . }}.{{ .Release.Namespace }}.svc:{{ .Values.scaler.service.grpcPort }}
{{- end }}

{{/* Labels. Call with (dict "root" $ "component" "scaler"). */}}
{{- define "eds.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eds.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "eds.labels" -}}
{{ include "eds.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: eds
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
No eds image is published: the user builds one from the Dockerfile and names
it. Without one, installing fails here rather than pulling an image that
does not exist.
*/}}
{{- define "eds.image" -}}
{{- $repository := required "image.repository is required: this project publishes no image. Build it from the repository's Dockerfile (docker build -t <registry>/eds:<version> .), push it, and set image.repository (see docs/install.md, \"The eds image\")" .Values.image.repository -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{ $repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/*
NATS connections. Every connection, the default one included, goes into one
config file; the secrets it names are projected into one read-only volume as
<connection>/<kind>. Credentials never enter the config file or an env var.
*/}}
{{- define "eds.nats.secretDir" -}}/etc/eds/nats-secrets{{- end }}
{{- define "eds.nats.configPath" -}}/etc/eds/nats/connections.yaml{{- end }}

{{/* Every connection by name, default first, checked once for all templates. */}}
{{- define "eds.nats.connections" -}}
{{- $all := dict "default" .Values.nats.default -}}
{{- range $name, $conn := .Values.nats.connections -}}
{{- if eq $name "default" -}}
{{- fail "nats.connections.default: configure the default connection under nats.default" -}}
{{- end -}}
{{- $_ := set $all $name $conn -}}
{{- end -}}
{{- range $name, $conn := $all -}}
{{- $path := ternary "nats.default" (printf "nats.connections.%s" $name) (eq $name "default") -}}
{{- $methods := list -}}
{{- range $key := list "credsSecret" "nkeySeedSecret" "tokenSecret" -}}
{{- if (get $conn $key | default dict).name -}}{{- $methods = append $methods $key -}}{{- end -}}
{{- end -}}
{{- if $conn.user -}}{{- $methods = append $methods "user" -}}{{- end -}}
{{- if gt (len $methods) 1 -}}
{{- fail (printf "%s: set one auth method, not %s" $path (join " and " $methods)) -}}
{{- end -}}
{{- if and $conn.user (not ($conn.passwordSecret | default dict).name) -}}
{{- fail (printf "%s.passwordSecret: required with %s.user" $path $path) -}}
{{- end -}}
{{- if and ($conn.passwordSecret | default dict).name (not $conn.user) -}}
{{- fail (printf "%s.user: required with %s.passwordSecret" $path $path) -}}
{{- end -}}
{{- end -}}
{{- toJson $all -}}
{{- end }}

{{/* The secrets a connection uses: file kind -> {name, key}. */}}
{{- define "eds.nats.secretFiles" -}}
{{- $files := dict -}}
{{- with .credsSecret }}{{ if .name }}{{ $_ := set $files "creds" . }}{{ end }}{{ end -}}
{{- with .nkeySeedSecret }}{{ if .name }}{{ $_ := set $files "nkey-seed" . }}{{ end }}{{ end -}}
{{- with .tokenSecret }}{{ if .name }}{{ $_ := set $files "token" . }}{{ end }}{{ end -}}
{{- with .passwordSecret }}{{ if .name }}{{ $_ := set $files "password" . }}{{ end }}{{ end -}}
{{- with .tls }}
{{- with .caSecret }}{{ if .name }}{{ $_ := set $files "ca.crt" . }}{{ end }}{{ end -}}
{{- with .clientCertSecret }}
{{- $_ := set $files "tls.crt" (dict "name" . "key" "tls.crt") -}}
{{- $_ := set $files "tls.key" (dict "name" . "key" "tls.key") -}}
{{- end -}}
{{- end -}}
{{- toJson $files -}}
{{- end }}

{{/* The connections file eds reads (EDS_NATS_CONFIG); see src/nats.rs. */}}
{{- define "eds.nats.configFile" -}}
{{- $dir := include "eds.nats.secretDir" . -}}
{{- $out := dict -}}
{{- range $name, $conn := include "eds.nats.connections" . | fromJson -}}
{{- $files := include "eds.nats.secretFiles" $conn | fromJson -}}
{{- $c := dict "url" $conn.url -}}
{{- if hasKey $files "creds" }}{{ $_ := set $c "credsFile" (printf "%s/%s/creds" $dir $name) }}{{ end -}}
{{- if hasKey $files "nkey-seed" }}{{ $_ := set $c "nkeySeedFile" (printf "%s/%s/nkey-seed" $dir $name) }}{{ end -}}
{{- if hasKey $files "token" }}{{ $_ := set $c "tokenFile" (printf "%s/%s/token" $dir $name) }}{{ end -}}
{{- if $conn.user }}{{ $_ := set $c "user" $conn.user }}{{ end -}}
{{- if hasKey $files "password" }}{{ $_ := set $c "passwordFile" (printf "%s/%s/password" $dir $name) }}{{ end -}}
{{- $tls := dict -}}
{{- if hasKey $files "ca.crt" }}{{ $_ := set $tls "caFile" (printf "%s/%s/ca.crt" $dir $name) }}{{ end -}}
{{- if hasKey $files "tls.crt" -}}
{{- $_ := set $tls "certFile" (printf "%s/%s/tls.crt" $dir $name) -}}
{{- $_ := set $tls "keyFile" (printf "%s/%s/tls.key" $dir $name) -}}
{{- end -}}
{{- if $tls }}{{ $_ := set $c "tls" $tls }}{{ end -}}
{{- /* Always written: a connection with no rule allows no namespace. */ -}}
{{- $_ := set $c "namespaces" ($conn.namespaces | default list) -}}
{{- with $conn.reads }}{{ $_ := set $c "reads" . }}{{ end -}}
{{- $_ := set $out $name $c -}}
{{- end -}}
{{- dict "connections" $out | toYaml -}}
{{- end }}

{{/* The projected volume sources for every secret file of every connection. */}}
{{- define "eds.nats.secretSources" -}}
{{- range $name, $conn := include "eds.nats.connections" . | fromJson }}
{{- range $file, $ref := include "eds.nats.secretFiles" $conn | fromJson }}
- secret:
    name: {{ $ref.name }}
    items:
      - key: {{ $ref.key }}
        path: {{ $name }}/{{ $file }}
{{- end }}
{{- end }}
{{- end }}

{{/* Env, volumes and mounts every eds container needs for NATS. */}}
{{- define "eds.nats.env" -}}
- name: EDS_NATS_CONFIG
  value: {{ include "eds.nats.configPath" . }}
- name: EDS_NATS_REQUEST_TIMEOUT
  value: {{ .Values.nats.requestTimeout | quote }}
{{- end }}

{{- define "eds.nats.volumeMounts" -}}
- name: nats-config
  mountPath: {{ include "eds.nats.configPath" . | dir }}
  readOnly: true
{{- if include "eds.nats.secretSources" . }}
- name: nats-secrets
  mountPath: {{ include "eds.nats.secretDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "eds.nats.volumes" -}}
- name: nats-config
  configMap:
    name: {{ include "eds.fullname" . }}-nats
{{- with include "eds.nats.secretSources" . }}
- name: nats-secrets
  projected:
    defaultMode: 288 # 0440: owner and the pod's fsGroup may read
    sources:
      {{- . | nindent 6 }}
{{- end }}
{{- end }}

{{/* The Restricted pod security profile, and a bit more (read-only root). */}}
{{- define "eds.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "eds.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Env common to both components. */}}
{{- define "eds.commonEnv" -}}
- name: EDS_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/*
Scheduling for one component. Call with (dict "root" $ "component" "scaler"
"values" .Values.scaler). Without explicit constraints, replicas spread over
nodes and zones where the cluster allows it, and still schedule where it does not.
*/}}
{{- define "eds.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
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
topologySpreadConstraints:
{{- if .values.topologySpreadConstraints }}
  {{- toYaml .values.topologySpreadConstraints | nindent 2 }}
{{- else }}
{{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ $key }}
    whenUnsatisfiable: ScheduleAnyway
    matchLabelKeys: ["pod-template-hash"]
    labelSelector:
      matchLabels:
        {{- include "eds.selectorLabels" $ | nindent 8 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Liveness on /healthz (the process answers), readiness on /readyz (NATS is connected). */}}
{{- define "eds.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}

{{/* The components this release runs: the controller only where the eds
controller serves the API (controller.enabled), the scaler always. */}}
{{- define "eds.components" -}}
{{- if .Values.controller.enabled }}controller scaler{{ else }}scaler{{ end }}
{{- end }}
