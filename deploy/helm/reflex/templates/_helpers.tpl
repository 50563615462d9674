{{/* The release's base name. */}}
{{- define "reflex.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "reflex.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: (dict "root" $ "role" "actions"). */}}
{{- define "reflex.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "reflex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "reflex.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Checks that hold for the whole release. */}}
{{- define "reflex.validate" -}}
{{- $p := int .Values.partitions -}}
{{- if lt $p 1 -}}{{- fail "partitions must be at least 1" -}}{{- end -}}
{{- range $name, $role := .Values.roles -}}
{{- if and $role.enabled (gt (int $role.replicas) $p) -}}
{{- fail (printf "roles.%s.replicas = %d is more than partitions = %d: the extra replicas would get no partition" $name (int $role.replicas) $p) -}}
{{- end -}}
{{- if not (has $role.kind (list "Deployment" "StatefulSet")) -}}
{{- fail (printf "roles.%s.kind = %q: use Deployment or StatefulSet" $name $role.kind) -}}
{{- end -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas = %d is more than autoscaling.maxReplicas = %d" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.minReplicas) $p -}}
{{- fail (printf "autoscaling.minReplicas = %d is more than partitions = %d" (int .Values.autoscaling.minReplicas) $p) -}}
{{- end -}}
{{- end -}}
{{- end -}}
