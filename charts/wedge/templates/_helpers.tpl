{{/* Chart name, overridable. */}}
{{- define "wedge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of object names: release name plus chart name, unless one contains the other. */}}
{{- define "wedge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "wedge.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The installer's objects: DaemonSet, ServiceAccount, ClusterRole(Binding), hook Jobs. */}}
{{- define "wedge.installerName" -}}
{{- printf "%s-node-installer" (include "wedge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wedge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wedge.installerName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wedge.engineConfigName" -}}
{{- printf "%s-engine-config" (include "wedge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "wedge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "wedge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wedge
{{- end -}}

{{/* The installer pods' selector; never changes across upgrades. */}}
{{- define "wedge.installerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "wedge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-installer
{{- end -}}

{{- define "wedge.image" -}}
{{- printf "%s:%s" .Values.installer.image.repository (default .Chart.AppVersion .Values.installer.image.tag) -}}
{{- end -}}

{{/* Where the engine config is mounted in the installer pods. */}}
{{- define "wedge.engineConfigDir" -}}/etc/wedge-installer{{- end -}}

{{/*
Flags that name the node's containerd and the runtime, shared by `wedge node install`,
`uninstall` and `status`, as a YAML list.
*/}}
{{- define "wedge.nodeFlags" -}}
- --host-root={{ .Values.paths.hostRoot }}
- --flavour={{ .Values.containerd.flavour }}
{{- with .Values.containerd.configPath }}
- --containerd-config={{ . }}
{{- end }}
- --shim-dest={{ .Values.paths.shimDestDir }}
- --runtime-class={{ .Values.runtimeClass.handler }}
{{- end -}}

{{/* Arguments of the install or uninstall step (after the binary), as a YAML list. */}}
{{- define "wedge.stepArgs" -}}
{{- $mode := .mode -}}
{{- with .root -}}
- node
- {{ $mode }}
{{ include "wedge.nodeFlags" . }}
{{- if eq $mode "install" }}
- --shim-source=/usr/local/bin/containerd-shim-wedge-v1
- --engine-config={{ include "wedge.engineConfigDir" . }}/config.toml
{{- if .Values.engineConfig.overwrite }}
- --overwrite-engine-config
{{- end }}
{{- end }}
{{- if .Values.labelNodes }}
- --label-node
{{- end }}
{{- range .Values.installer.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* securityContext of a container that changes the host (install, uninstall). */}}
{{- define "wedge.hostChangerSecurityContext" -}}
# Root is required: the files it writes on the host (shim directory,
# /etc, containerd's config) belong to root.
runAsUser: 0
runAsNonRoot: false
# privileged gives what the step cannot do without:
# - CAP_SYS_ADMIN + CAP_SYS_PTRACE and no seccomp/AppArmor filter, to
#   setns() into PID 1's mount, UTS, IPC and network namespaces and run
#   the host's service manager there (restart containerd);
# - the host's SELinux/AppArmor rules would otherwise refuse writes to
#   host binaries and /etc from a container's confined domain.
privileged: true
allowPrivilegeEscalation: true
# Everything it writes goes under the host root mount; its own
# filesystem stays read-only.
readOnlyRootFilesystem: true
{{- end -}}

{{/*
Checks that fail early with a message saying how to fix the values. values.schema.json says
most of this too; these also hold under --skip-schema-validation.
*/}}
{{- define "wedge.validate" -}}
{{- $flavours := list "auto" "containerd" "k3s" "rke2" "microk8s" "k0s" -}}
{{- if not (has .Values.containerd.flavour $flavours) -}}
{{- fail (printf "\n\ncontainerd.flavour %q is not supported: use one of %s (auto recognises the node's containerd; Docker-only nodes cannot run Wedge, which is a containerd shim)." (toString .Values.containerd.flavour) (join ", " $flavours)) -}}
{{- end -}}
{{- if not (has .Values.installer.mode (list "install" "uninstall")) -}}
{{- fail (printf "\n\ninstaller.mode %q is not supported: use install, or uninstall to remove Wedge from the nodes before `helm uninstall`." (toString .Values.installer.mode)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .Values.runtimeClass.handler)) -}}
{{- fail (printf "\n\nruntimeClass.handler %q must be a DNS label (lowercase letters, digits, '-'): it names containerd's runtime entry." (toString .Values.runtimeClass.handler)) -}}
{{- end -}}
{{- if not (isAbs (toString .Values.paths.shimDestDir)) -}}
{{- fail "\n\npaths.shimDestDir must be an absolute path on the host, e.g. /usr/local/bin." -}}
{{- end -}}
{{- if and .Values.containerd.configPath (not (isAbs (toString .Values.containerd.configPath))) -}}
{{- fail "\n\ncontainerd.configPath must be an absolute path on the host (or empty for the flavour's default)." -}}
{{- end -}}
{{- if eq (toString .Values.installer.image.tag) "latest" -}}
{{- fail "\n\ninstaller.image.tag: latest is refused; leave it empty for the chart's appVersion or name a release, so every node runs the same installer." -}}
{{- end -}}
{{- end -}}
