{{/* The domains the service knows. */}}
{{- define "reward-service.knownDomains" -}}
math code stem reasoning_gym ifeval
{{- end }}

{{- define "reward-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reward-service.fullname" -}}
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

{{- define "reward-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reward-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reward-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "reward-service.labels" -}}
helm.sh/chart: {{ include "reward-service.chart" . }}
{{ include "reward-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reward-service
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway" ["worker" "code"]). */}}
{{- define "reward-service.componentSelectorLabels" -}}
{{ include "reward-service.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .worker }}
reward-service/worker: {{ include "reward-service.dnsName" . }}
{{- end }}
{{- end }}

{{- define "reward-service.componentLabels" -}}
{{ include "reward-service.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .worker }}
reward-service/worker: {{ include "reward-service.dnsName" . }}
{{- end }}
{{- end }}

{{/* A values key as a DNS label: reasoning_gym -> reasoning-gym. */}}
{{- define "reward-service.dnsName" -}}
{{- . | replace "_" "-" | lower }}
{{- end }}

{{- define "reward-service.gatewayName" -}}
{{- printf "%s-gateway" (include "reward-service.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reward-service.redisName" -}}
{{- printf "%s-redis" (include "reward-service.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* (dict "root" $ "name" "reasoning_gym") -> <fullname>-worker-reasoning-gym */}}
{{- define "reward-service.workerName" -}}
{{- printf "%s-worker-%s" (include "reward-service.fullname" .root) (include "reward-service.dnsName" .name) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The domains one worker entry serves, space separated: (dict "name" $name "worker" $worker). */}}
{{- define "reward-service.workerDomains" -}}
{{- if .worker.domains }}{{ join " " .worker.domains }}{{ else }}{{ .name }}{{ end }}
{{- end }}

{{- define "reward-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reward-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "reward-service.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* ------------------------------------------------------------------ Redis connection */}}

{{/* The Secret the chart makes from redis.external.url. */}}
{{- define "reward-service.redisSecretName" -}}
{{- printf "%s-redis-url" (include "reward-service.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Parsed redis.external.url: a dict with address, port, password, username, database, tls. */}}
{{- define "reward-service.parsedRedisUrl" -}}
{{- $url := urlParse .Values.redis.external.url }}
{{- $hostPort := splitList ":" $url.host }}
{{- $port := "6379" }}
{{- if gt (len $hostPort) 1 }}{{ $port = last $hostPort }}{{ end }}
{{- $user := "" }}
{{- $password := "" }}
{{- with $url.userinfo }}
{{- $parts := splitn ":" 2 . }}
{{- $user = $parts._0 | default "" }}
{{- $password = $parts._1 | default "" }}
{{- end }}
{{- $db := trimPrefix "/" ($url.path | default "") | default "0" }}
{{- toYaml (dict "address" (printf "%s:%s" (first $hostPort) $port) "port" $port "username" $user "password" $password "database" $db "tls" (eq $url.scheme "rediss")) }}
{{- end }}

{{/* The Redis port, for NetworkPolicies. */}}
{{- define "reward-service.redisPort" -}}
{{- if .Values.redis.bundled.enabled }}{{ .Values.redis.bundled.port }}
{{- else if .Values.redis.external.url }}{{ (include "reward-service.parsedRedisUrl" . | fromYaml).port }}
{{- else }}{{ .Values.redis.external.port }}
{{- end }}
{{- end }}

{{/* The REWARD_SERVICE_REDIS_URL env entry. */}}
{{- define "reward-service.redisUrlEnv" -}}
- name: REWARD_SERVICE_REDIS_URL
{{- if .Values.redis.bundled.enabled }}
  value: {{ printf "redis://%s:%v/0" (include "reward-service.redisName" .) .Values.redis.bundled.port | quote }}
{{- else if .Values.redis.external.url }}
  valueFrom:
    secretKeyRef:
      name: {{ include "reward-service.redisSecretName" . }}
      key: url
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretUrlKey }}
{{- end }}
{{- end }}

{{/* Environment shared by the gateway and the workers. */}}
{{- define "reward-service.commonEnv" -}}
- name: REWARD_SERVICE_HOST
  value: "0.0.0.0"
{{ include "reward-service.redisUrlEnv" . }}
- name: REWARD_SERVICE_REDIS_PREFIX
  value: {{ .Values.redisPrefix | quote }}
{{- if not (kindIs "invalid" .Values.maxStreamLength) }}
- name: REWARD_SERVICE_MAX_STREAM_LENGTH
  value: {{ .Values.maxStreamLength | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.visibilityTimeoutS) }}
- name: REWARD_SERVICE_VISIBILITY_TIMEOUT_S
  value: {{ .Values.visibilityTimeoutS | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Probes on a named port: (dict "root" $ "port" "http"). */}}
{{- define "reward-service.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  {{- toYaml .root.Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
{{- end }}

{{/* The writable /tmp of app containers. */}}
{{- define "reward-service.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmp.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.tmp.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{- define "reward-service.metricsAnnotations" -}}
{{- if .root.Values.metrics.prometheusAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ checks */}}

{{/* Fails the render on values the schema cannot catch. */}}
{{- define "reward-service.validate" -}}
{{- $r := .Values.redis }}
{{- $sources := 0 }}
{{- if $r.bundled.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.external.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.external.existingSecret }}{{ $sources = add1 $sources }}{{ end }}
{{- if ne $sources 1 }}
{{- fail "redis: set exactly one of redis.bundled.enabled=true, redis.external.url, redis.external.existingSecret" }}
{{- end }}
{{- if $r.external.url }}
{{- if not (regexMatch "^rediss?://" $r.external.url) }}
{{- fail "redis.external.url must start with redis:// or rediss://" }}
{{- end }}
{{- end }}
{{- if and $r.external.existingSecret (eq .Values.autoscaling.mode "keda") (not $r.external.existingSecretAddressKey) }}
{{- fail "autoscaling.mode=keda with redis.external.existingSecret needs redis.external.existingSecretAddressKey (KEDA reads host:port, not a URL)" }}
{{- end }}
{{- $known := splitList " " (include "reward-service.knownDomains" .) }}
{{- range $name, $worker := .Values.workers }}
{{- if and $worker.enabled (not $worker.domains) (not (has $name $known)) }}
{{- fail (printf "workers.%s: %q is not a domain (%s); set workers.%s.domains" $name $name (join ", " $known) $name) }}
{{- end }}
{{- end }}
{{- end }}
