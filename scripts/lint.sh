#!/usr/bin/env bash
# make lint, and the lint step of make test: yamllint, ansible-lint (production profile), ruff, and shellcheck on
# every shell script git tracks (by name or by its #! line). Runs every linter; fails if any failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH="$PWD/.venv/bin:$PATH"
rc=0
python_dirs=(scripts tests molecule roles proof inputs callback_plugins)

echo "-- yamllint" && { yamllint --strict . || rc=1; }
echo "-- ansible-lint (production profile)" && { ansible-lint --profile production --offline || rc=1; }
echo "-- ruff check" && { ruff check "${python_dirs[@]}" || rc=1; }
echo "-- ruff format --check" && { ruff format --check "${python_dirs[@]}" || rc=1; }

scripts=()
while IFS= read -r -d '' path; do
    case ${path##*/} in
        *.sh) scripts+=("$path") ;;
        *.*) ;;
        *) head -c 64 "$path" | head -n 1 | grep -qE '^#!.*[/ ](ba)?sh( |$)' && scripts+=("$path") ;;
    esac
done < <(git ls-files -z)
echo "-- shellcheck (${#scripts[@]} shell scripts)" && { shellcheck "${scripts[@]}" || rc=1; }
[ "$rc" -eq 0 ] && echo "lint: clean"
exit "$rc"
