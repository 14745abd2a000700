# Sourced by scripts/setup.sh and scripts/setup-tests.sh: `log` (with the caller's
# LOG_NAME) and `apt_install PKG...`, which installs only what is missing (apt-get
# update once, only when something is). As root without sudo, else with sudo.
log() { printf '%s: %s\n' "${LOG_NAME:-setup}" "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}
