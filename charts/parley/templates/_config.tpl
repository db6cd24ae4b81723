{{/* The environment of each service: the data of its ConfigMap, also hashed into its pods'
annotations so that a change of its own settings (and only of its own) rolls its pods. */}}

{{- define "parley.config.gateway" -}}
{{- $v := .Values -}}
{{ include "parley.commonConfig" (dict "root" . "component" "gateway") }}
PORT: {{ $v.gateway.port | quote }}
SESSION_ADDR: {{ include "parley.session.addr" . | quote }}
CACHE_ADDR: {{ include "parley.cache.addr" . | quote }}
RATE_LIMIT_REQUESTS_PER_MINUTE: {{ $v.gateway.rateLimit.requestsPerMinute | int64 | toString | quote }}
RATE_LIMIT_TOKENS_PER_MINUTE: {{ $v.gateway.rateLimit.tokensPerMinute | int64 | toString | quote }}
MAX_QUEUE_DEPTH: {{ $v.gateway.maxQueueDepth | int64 | toString | quote }}
MAX_CHOICES: {{ $v.gateway.maxChoices | int64 | toString | quote }}
CACHE_SAMPLE_SHARE: {{ $v.gateway.cacheSampleShare | toString | quote }}
ATTACHMENT_MAX_BYTES: {{ $v.attachments.maxBytes | int64 | toString | quote }}
SIGN_UP_MODE: {{ $v.gateway.accounts.signUpMode | quote }}
SESSION_COOKIE_SECURE: {{ $v.gateway.accounts.sessionCookieSecure | toString | quote }}
SESSION_IDLE_TIMEOUT_S: {{ $v.gateway.accounts.sessionIdleTimeoutS | int64 | toString | quote }}
SESSION_ABSOLUTE_TIMEOUT_S: {{ $v.gateway.accounts.sessionAbsoluteTimeoutS | int64 | toString | quote }}
SIGN_IN_MAX_FAILURES_PER_ACCOUNT: {{ $v.gateway.accounts.maxFailuresPerAccount | int64 | toString | quote }}
SIGN_IN_MAX_FAILURES_PER_ADDRESS: {{ $v.gateway.accounts.maxFailuresPerAddress | int64 | toString | quote }}
SIGN_IN_FAILURE_WINDOW_S: {{ $v.gateway.accounts.failureWindowS | int64 | toString | quote }}
BUDGET_PERIOD_S: {{ $v.gateway.budgets.periodS | int64 | toString | quote }}
BUDGET_USER_REQUESTS: {{ $v.gateway.budgets.userRequests | int64 | toString | quote }}
BUDGET_USER_TOKENS: {{ $v.gateway.budgets.userTokens | int64 | toString | quote }}
BUDGET_TENANT_REQUESTS: {{ $v.gateway.budgets.tenantRequests | int64 | toString | quote }}
BUDGET_TENANT_TOKENS: {{ $v.gateway.budgets.tenantTokens | int64 | toString | quote }}
{{- with $v.gateway.oidc }}
{{- if .issuer }}
OIDC_ISSUER: {{ .issuer | quote }}
OIDC_CLIENT_ID: {{ .clientId | quote }}
OIDC_REDIRECT_URI: {{ .redirectUri | quote }}
OIDC_SCOPES: {{ .scopes | quote }}
OIDC_GROUPS_CLAIM: {{ .groupsClaim | quote }}
OIDC_GROUP_ROLES: {{ .groupRoles | quote }}
OIDC_TENANT_ID: {{ .tenantId | quote }}
{{- end }}
{{- end }}
{{- with $v.gateway.corsAllowedOrigins }}
CORS_ALLOWED_ORIGINS: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "parley.config.session" -}}
{{- $v := .Values -}}
{{ include "parley.commonConfig" (dict "root" . "component" "session") }}
GRPC_PORT: {{ $v.session.grpcPort | quote }}
METRICS_PORT: {{ $v.session.metricsPort | quote }}
MONGODB_DATABASE: {{ $v.mongodb.database | quote }}
MODEL_NAME: {{ $v.model.name | quote }}
{{- with $v.model.tokenizerPath }}
TOKENIZER_PATH: {{ . | quote }}
{{- end }}
{{- with $v.model.visionModels }}
VISION_MODELS: {{ . | quote }}
{{- end }}
ATTACHMENT_MAX_BYTES: {{ $v.attachments.maxBytes | int64 | toString | quote }}
ATTACHMENT_MAX_PER_CHAT: {{ $v.attachments.maxPerChat | int64 | toString | quote }}
ATTACHMENT_MAX_CHAT_BYTES: {{ $v.attachments.maxChatBytes | int64 | toString | quote }}
{{- end -}}

{{- define "parley.config.cache" -}}
{{- $v := .Values -}}
{{ include "parley.commonConfig" (dict "root" . "component" "cache") }}
GRPC_PORT: {{ $v.cache.grpcPort | quote }}
METRICS_PORT: {{ $v.cache.metricsPort | quote }}
QDRANT_ADDR: {{ include "parley.qdrant.addr" . | quote }}
QDRANT_GRPC_ADDR: {{ include "parley.qdrant.grpcAddr" . | quote }}
{{- with $v.cache.embeddingModel }}
EMBEDDING_MODEL: {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.cache.similarityThreshold) }}
CACHE_SIMILARITY_THRESHOLD: {{ $v.cache.similarityThreshold | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.cache.ttlSeconds) }}
CACHE_TTL_SECONDS: {{ $v.cache.ttlSeconds | int64 | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.cache.maxErrorRate) }}
CACHE_MAX_ERROR_RATE: {{ $v.cache.maxErrorRate | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.cache.sampleMinSimilarity) }}
CACHE_SAMPLE_MIN_SIMILARITY: {{ $v.cache.sampleMinSimilarity | toString | quote }}
{{- end }}
{{- end -}}

{{- define "parley.config.worker" -}}
{{- $v := .Values -}}
{{ include "parley.commonConfig" (dict "root" . "component" "worker") }}
ENGINE: {{ $v.worker.engine | quote }}
MODEL_NAME: {{ $v.model.name | quote }}
MAX_CONCURRENCY: {{ $v.worker.maxConcurrency | quote }}
WORKER_GROUP: {{ $v.worker.group | quote }}
METRICS_PORT: {{ $v.worker.metricsPort | quote }}
{{- end -}}
