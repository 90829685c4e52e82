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

{{/* The Secret key of the Redis password, {name, key}, or nothing (no password). */}}
{{- define "reward-service.redisPasswordRef" -}}
{{- $r := .Values.redis }}
{{- if $r.bundled.enabled }}
{{- $key := "password" }}
{{- if $r.bundled.auth.existingSecret }}{{ $key = $r.bundled.auth.existingSecretKey }}{{ end }}
{{- toYaml (dict "name" (include "reward-service.redisAuthSecretName" .) "key" $key) }}
{{- else if $r.external.passwordSecret.name }}
{{- toYaml $r.external.passwordSecret }}
{{- end }}
{{- end }}

{{/* Environment of the gateway and the workers: (dict "root" $ "gateway" true|false); the
paths of the files from Secrets come from "reward-service.secretFiles". */}}
{{- define "reward-service.env" -}}
{{- $v := .root.Values }}
- name: REWARD_SERVICE_HOST
  value: "0.0.0.0"
{{ include "reward-service.redisUrlEnv" .root }}
{{- with include "reward-service.redisPasswordRef" .root | fromYaml }}
- name: REWARD_SERVICE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- toYaml . | nindent 6 }}
{{- end }}
{{- if and (not $v.redis.bundled.enabled) $v.redis.external.username }}
- name: REWARD_SERVICE_REDIS_USERNAME
  value: {{ $v.redis.external.username | quote }}
{{- end }}
- name: REWARD_SERVICE_REDIS_PREFIX
  value: {{ $v.redisPrefix | quote }}
{{- if not (kindIs "invalid" $v.maxStreamLength) }}
- name: REWARD_SERVICE_MAX_STREAM_LENGTH
  value: {{ $v.maxStreamLength | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.visibilityTimeoutS) }}
- name: REWARD_SERVICE_VISIBILITY_TIMEOUT_S
  value: {{ $v.visibilityTimeoutS | quote }}
{{- end }}
{{- if $v.queue.allowUnsigned }}
- name: REWARD_SERVICE_ALLOW_UNSIGNED_QUEUE
  value: "true"
{{- end }}
{{- if .gateway }}
{{- if $v.auth.enabled }}
- name: REWARD_SERVICE_OPEN_HEALTH
  value: {{ $v.auth.openHealth | quote }}
- name: REWARD_SERVICE_OPEN_METRICS
  value: {{ $v.auth.openMetrics | quote }}
{{- else }}
- name: REWARD_SERVICE_ALLOW_UNAUTHENTICATED
  value: "true"
{{- end }}
{{- range $field, $name := dict "rate" "CLIENT_RATE" "burst" "CLIENT_BURST" "maxInFlight" "CLIENT_MAX_IN_FLIGHT" }}
{{- $limit := get $v.auth.clientLimits $field }}
{{- if not (kindIs "invalid" $limit) }}
- name: REWARD_SERVICE_{{ $name }}
  value: {{ $limit | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- range (include "reward-service.secretFiles" . | fromYaml).env }}
- name: {{ .name }}
  value: {{ .value | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ Secrets and files */}}

{{- define "reward-service.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "reward-service.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{- define "reward-service.queueKeysSecretName" -}}
{{- .Values.queue.existingSecret | default (printf "%s-queue-keys" (include "reward-service.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{- define "reward-service.redisAuthSecretName" -}}
{{- .Values.redis.bundled.auth.existingSecret | default (printf "%s-redis-auth" (include "reward-service.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{/* The gateway's kubernetes.io/tls Secret: yours, or the one the chart or cert-manager makes. */}}
{{- define "reward-service.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "reward-service.gatewayName" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{/* The DNS names of the gateway's certificate. */}}
{{- define "reward-service.tlsDnsNames" -}}
{{- $service := include "reward-service.gatewayName" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.%s" $service $ns .Values.tls.clusterDomain) "localhost" }}
{{- toYaml (concat $names .Values.tls.extraDnsNames | uniq) }}
{{- end }}

{{/* A Secret the chart generates once: the live Secret's data when it exists (upgrades keep
tokens, keys and certificates, and your edits), else `data` (plain text, encoded here).
`helm template` sees no cluster and always generates. (dict "root" $ "name" N "data" D
["type" T] ["comment" C]) */}}
{{- define "reward-service.generatedSecret" -}}
{{- $live := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- with .comment }}
# {{ . }}
{{- end }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ .name }}
  labels:
    {{- include "reward-service.labels" .root | nindent 4 }}
type: {{ .type | default "Opaque" }}
data:
{{- if and $live $live.data }}
  {{- toYaml $live.data | nindent 2 }}
{{- else }}
{{- range $key, $value := .data }}
  {{ $key | quote }}: {{ $value | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Files the app containers read from Secrets, as {env, volumeMounts, volumes}: queue keys
and Redis TLS for everyone; the clients file and the server certificate for the gateway.
(dict "root" $ "gateway" true|false) */}}
{{- define "reward-service.secretFiles" -}}
{{- $v := .root.Values }}
{{- $files := list }}
{{- if not $v.queue.allowUnsigned }}
{{- $key := "queue-keys" }}
{{- if $v.queue.existingSecret }}{{ $key = $v.queue.existingSecretKey }}{{ end }}
{{- $files = append $files (dict "volume" "queue-keys" "secret" (include "reward-service.queueKeysSecretName" .root) "items" (dict "queue-keys" $key) "env" (dict "QUEUE_KEYS_FILE" "queue-keys")) }}
{{- end }}
{{- if not $v.redis.bundled.enabled }}
{{- with $v.redis.external.tlsCASecret.name }}
{{- $files = append $files (dict "volume" "redis-ca" "secret" . "items" (dict "ca.crt" $v.redis.external.tlsCASecret.key) "env" (dict "REDIS_TLS_CA_FILE" "ca.crt")) }}
{{- end }}
{{- with $v.redis.external.tlsClientSecret }}
{{- $files = append $files (dict "volume" "redis-client-cert" "secret" . "items" (dict "tls.crt" "tls.crt" "tls.key" "tls.key") "env" (dict "REDIS_TLS_CERT_FILE" "tls.crt" "REDIS_TLS_KEY_FILE" "tls.key")) }}
{{- end }}
{{- end }}
{{- if .gateway }}
{{- if $v.auth.enabled }}
{{- $key := "clients.toml" }}
{{- if $v.auth.existingSecret }}{{ $key = $v.auth.existingSecretKey }}{{ end }}
{{- $files = append $files (dict "volume" "clients" "secret" (include "reward-service.authSecretName" .root) "items" (dict "clients.toml" $key) "env" (dict "CLIENTS_FILE" "clients.toml")) }}
{{- end }}
{{- if $v.tls.enabled }}
{{- $files = append $files (dict "volume" "tls" "secret" (include "reward-service.tlsSecretName" .root) "items" (dict "tls.crt" "tls.crt" "tls.key" "tls.key") "env" (dict "TLS_CERT_FILE" "tls.crt" "TLS_KEY_FILE" "tls.key")) }}
{{- with $v.tls.clientCA.secretName }}
{{- $files = append $files (dict "volume" "client-ca" "secret" . "items" (dict "ca.crt" $v.tls.clientCA.key) "env" (dict "TLS_CLIENT_CA_FILE" "ca.crt")) }}
{{- end }}
{{- end }}
{{- end }}
{{- $env := list }}
{{- $mounts := list }}
{{- $volumes := list }}
{{- range $files }}
{{- /* A whole-Secret mount (no subPath): the kubelet then updates the files in place. */}}
{{- $dir := printf "/etc/reward-service/%s" .volume }}
{{- $items := list }}
{{- range $path, $key := .items }}
{{- $items = append $items (dict "key" $key "path" $path) }}
{{- end }}
{{- $volumes = append $volumes (dict "name" .volume "secret" (dict "secretName" .secret "items" $items "defaultMode" 288)) }}
{{- $mounts = append $mounts (dict "name" .volume "mountPath" $dir "readOnly" true) }}
{{- range $name, $file := .env }}
{{- $env = append $env (dict "name" (printf "REWARD_SERVICE_%s" $name) "value" (printf "%s/%s" $dir $file)) }}
{{- end }}
{{- end }}
{{- toYaml (dict "env" $env "volumeMounts" $mounts "volumes" $volumes) }}
{{- end }}

{{/* Probes on a named port: (dict "root" $ "port" "http" ["https" true] ["tcp" true]).
HTTPS probes do not check the certificate; tcp: the health paths need a token (the kubelet
sends none), so the probes only check that the port accepts connections. */}}
{{- define "reward-service.probes" -}}
{{- $ctx := . }}
{{- range $probe, $path := dict "startup" "/healthz" "liveness" "/healthz" "readiness" "/readyz" }}
{{ $probe }}Probe:
  {{- if $ctx.tcp }}
  tcpSocket: {port: {{ $ctx.port }}}
  {{- else }}
  httpGet: {path: {{ $path }}, port: {{ $ctx.port }}{{ if $ctx.https }}, scheme: HTTPS{{ end }}}
  {{- end }}
  {{- toYaml (get $ctx.root.Values.probes $probe) | nindent 2 }}
{{- end }}
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
{{- with .scheme }}
prometheus.io/scheme: {{ . }}
{{- end }}
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
{{- if and (not .Values.auth.enabled) (not .Values.auth.allowUnauthenticated) }}
{{- fail "auth.enabled=false leaves the gateway open to anyone who can reach it (it listens on every address of its pod): set auth.allowUnauthenticated=true to confirm, or keep auth.enabled=true" }}
{{- end }}
{{- if and .Values.queue.allowUnsigned .Values.queue.existingSecret }}
{{- fail "queue.allowUnsigned=true runs without queue keys: unset queue.existingSecret, or allowUnsigned" }}
{{- end }}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.issuerRef }}
{{- fail "tls: set tls.existingSecret or tls.certManager.issuerRef, not both" }}
{{- end }}
{{- if and .Values.tls.certManager.issuerRef (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef needs a name" }}
{{- end }}
{{- if and .Values.tls.clientCA.secretName (not .Values.tls.enabled) }}
{{- fail "tls.clientCA (mutual TLS) needs tls.enabled=true" }}
{{- end }}
{{- $sm := .Values.metrics.serviceMonitor }}
{{- if and $sm.enabled .Values.auth.enabled (not .Values.auth.openMetrics) .Values.auth.existingSecret (not $sm.bearerTokenSecret.name) }}
{{- fail "auth.openMetrics=false with auth.existingSecret: set metrics.serviceMonitor.bearerTokenSecret.name (and .key) to the Secret holding the token Prometheus sends" }}
{{- end }}
{{- if not $r.bundled.enabled }}
{{- $redisTls := $r.external.tls }}
{{- if $r.external.url }}{{ $redisTls = hasPrefix "rediss://" $r.external.url }}{{ end }}
{{- if and (or $r.external.tlsCASecret.name $r.external.tlsClientSecret) (not $redisTls) }}
{{- fail "redis.external.tlsCASecret / tlsClientSecret need TLS: a rediss:// url, or redis.external.tls=true with existingSecret" }}
{{- end }}
{{- end }}
{{- $known := splitList " " (include "reward-service.knownDomains" .) }}
{{- range $name, $worker := .Values.workers }}
{{- if and $worker.enabled (not $worker.domains) (not (has $name $known)) }}
{{- fail (printf "workers.%s: %q is not a domain (%s); set workers.%s.domains" $name $name (join ", " $known) $name) }}
{{- end }}
{{- end }}
{{- end }}
