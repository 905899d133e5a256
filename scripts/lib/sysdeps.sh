# System packages the tests and the benchmarks use, installed with apt-get when missing.
# Sourced by scripts/test and bench/run.sh:
#
#   . scripts/lib/sysdeps.sh
#   sysdeps_ensure LABEL PROBE=PACKAGE[|ALTERNATIVE]...
#
# PROBE is a command name (found on PATH or in /usr/sbin, /sbin), an absolute path that must
# exist, or "-" (the caller found it missing); when it is missing, the first PACKAGE alternative apt knows is installed. This only
# happens as root with apt-get available, and never fails the caller: each step is bounded by
# RATLS_SYSDEPS_TIMEOUT seconds (default 300), services the packages bring are not started, and
# one line on stderr says what was installed or why not (the tests that need it then skip and say
# why). RATLS_SYSDEPS=skip turns installing off.

_sysdeps_have() {
  case $1 in
    -) return 1 ;;
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
  esac
}

_sysdeps_candidate() {  # the first alternative of "a|b|c" that apt can install, or nothing
  local alt IFS='|'
  for alt in $1; do
    # not `| grep -q`: under the caller's pipefail, apt-cache's SIGPIPE would make a match fail
    case "$(apt-cache policy "$alt" 2>/dev/null)" in *"Candidate: "[0-9]*)
      echo "$alt"
      return
      ;;
    esac
  done
}

sysdeps_ensure() {
  local label=$1 spec probe pkgs
  shift
  local missing=()
  for spec in "$@"; do
    probe=${spec%%=*}
    pkgs=${spec#*=}
    _sysdeps_have "$probe" && continue
    case " ${missing[*]} " in *" $pkgs "*) ;; *) missing+=("$pkgs") ;; esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${RATLS_SYSDEPS:-}" = skip ]; then
    echo "$label: missing ${missing[*]} (not installing: RATLS_SYSDEPS=skip); what needs them is skipped" >&2
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$label: missing ${missing[*]} (run as root with apt-get to install them); what needs them is skipped" >&2
    return 0
  fi
  # in a subshell: its traps and variables stay there, and it never fails the caller
  (
    set +e
    deadline=$((SECONDS + ${RATLS_SYSDEPS_TIMEOUT:-300}))
    left() { echo $((deadline - SECONDS > 1 ? deadline - SECONDS : 1)); }
    log=$(mktemp "${TMPDIR:-/tmp}/ratls-apt.XXXXXX")
    started=$SECONDS
    policy_rc=${RATLS_POLICY_RC:-/usr/sbin/policy-rc.d}
    if [ -e "$policy_rc" ]; then
      policy_rc= # someone else's: leave it alone
    else # the packages must not start services (nginx on :80)
      printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod 755 "$policy_rc"
    fi
    trap '[ -n "$policy_rc" ] && rm -f "$policy_rc"; rm -f "$log"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-qq -o DPkg::Lock::Timeout=60 -o APT::Get::Assume-Yes=true)
    last_error() { local m; m=$(grep -E '^(E|W):' "$log" | tail -n 1); echo "${m:-$(tail -n 1 "$log")}"; }
    echo "$label: installing ${missing[*]} with apt-get (at most ${RATLS_SYSDEPS_TIMEOUT:-300}s)" >&2
    timeout "$(left)" apt-get "${apt_opts[@]}" update >"$log" 2>&1 \
      || echo "$label: apt-get update failed ($(last_error)); using the package lists there are" >&2
    chosen=() none=() installed=() failed=()
    for pkgs in "${missing[@]}"; do
      pkg=$(_sysdeps_candidate "$pkgs")
      if [ -n "$pkg" ]; then chosen+=("$pkg"); else none+=("$pkgs"); fi
    done
    if [ ${#chosen[@]} -gt 0 ]; then
      timeout "$(left)" apt-get "${apt_opts[@]}" install --no-install-recommends "${chosen[@]}" >"$log" 2>&1
      rc=$?
      if [ $rc = 0 ]; then
        installed=("${chosen[@]}")
      elif [ $rc = 124 ]; then
        failed=("${chosen[*]} (timed out)")
      else # one bad package must not keep the others out
        for pkg in "${chosen[@]}"; do
          if [ $((deadline - SECONDS)) -le 1 ]; then
            failed+=("$pkg (out of time)")
          elif timeout "$(left)" apt-get "${apt_opts[@]}" install --no-install-recommends "$pkg" >"$log" 2>&1; then
            installed+=("$pkg")
          else
            failed+=("$pkg ($(last_error))")
          fi
        done
      fi
    fi
    [ ${#installed[@]} -gt 0 ] && echo "$label: installed ${installed[*]} ($((SECONDS - started))s)" >&2
    [ ${#none[@]} -gt 0 ] && echo "$label: apt has no package ${none[*]}; what needs it is skipped" >&2
    for f in "${failed[@]}"; do echo "$label: could not install $f; what needs it is skipped" >&2; done
    exit 0
  ) || true
}
