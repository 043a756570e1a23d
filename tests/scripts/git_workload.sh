#!/usr/bin/env bash
# A deterministic git workload: init a repository in the (empty) directory
# given as $1, commit ~2000 generated files over several commits (edits,
# deletions, renames), run `git gc`, then print facts about the history that
# depend only on its content: commit hashes, `git log -p` and tree digests,
# an archive digest, fsck, blame and grep results.
#
# Run by tests/real_programs.rs with and without LD_PRELOAD=libarenalloc.so;
# the printed output must be identical. Needs bash, git and sha256sum.
set -euo pipefail

dir=${1:?usage: git_workload.sh EMPTY_DIRECTORY}
cd "$dir"

# Nothing from the user's or the system's configuration; fixed identities
# and dates so every hash is reproducible.
export HOME="$dir" XDG_CONFIG_HOME="$dir/.config"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME="Arena Tester" GIT_AUTHOR_EMAIL="tester@example.org"
export GIT_COMMITTER_NAME="Arena Tester" GIT_COMMITTER_EMAIL="tester@example.org"
export TZ=UTC LC_ALL=C
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE

commit_at() { # commit_at EPOCH MESSAGE
    GIT_AUTHOR_DATE="@$1 +0000" GIT_COMMITTER_DATE="@$1 +0000" git commit -q -m "$2"
}

git init -q -b main repo 2>/dev/null || { git init -q repo && git -C repo checkout -q -b main; }
cd repo
git config gc.auto 0
git config gc.autoDetach false
git config core.autocrlf false
git config pack.threads 2

# Deterministic pseudo-random numbers (an LCG in bash arithmetic).
seed=12345
dirs=()
next() { seed=$(((seed * 1103515245 + 12345) % 2147483648)); r=$((seed >> 8)); }

words=(alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi
    omicron pi rho sigma tau upsilon phi chi psi omega arena span segment heap)

gen_file() { # gen_file PATH VARIANT (the directory exists)
    local path=$1 variant=$2 lines i j line
    next
    lines=$((4 + r % 30))
    {
        printf '// %s (variant %s)\n' "$path" "$variant"
        for ((i = 0; i < lines; i++)); do
            line=""
            next
            for ((j = 0; j < 3 + r % 6; j++)); do
                line+="${words[(r + j * 7 + i) % ${#words[@]}]} "
            done
            printf '%d: %s%d\n' "$i" "$line" "$((r % 100000))"
        done
    } >"$path"
}

# Commit 1: 2000 files in 40 directories. (Directories are made up front:
# one process instead of one per file.)
mkdir -p src/new src/more
for ((d = 0; d < 40; d++)); do dirs+=("src/d$d"); done
mkdir -p "${dirs[@]}"
for ((f = 0; f < 2000; f++)); do
    gen_file "src/d$((f % 40))/file$f.txt" 1
done
git add -A
commit_at 1700000000 "initial: 2000 files"

# Commit 2: rewrite 500 files, delete 100, add 200.
for ((f = 0; f < 2000; f += 4)); do gen_file "src/d$((f % 40))/file$f.txt" 2; done
gone=()
for ((f = 1; f < 2000; f += 20)); do gone+=("src/d$((f % 40))/file$f.txt"); done
git rm -q "${gone[@]}"
for ((f = 2000; f < 2200; f++)); do gen_file "src/new/file$f.txt" 2; done
git add -A
commit_at 1700003600 "rewrite, delete, add"

# Commit 3: rename three directories, append to every 7th file.
for d in 3 17 29; do git mv "src/d$d" "src/renamed$d"; done
while IFS= read -r path; do
    printf 'appended line for %s\n' "$path" >>"$path"
done < <(git ls-files | sed -n '0~7p')
git add -A
commit_at 1700007200 "rename and append"

# Commit 4 on a branch, merged back.
git checkout -q -b topic
for ((f = 2; f < 2000; f += 9)); do
    p="src/d$((f % 40))/file$f.txt"
    [ -f "$p" ] && gen_file "$p" 4
done
git add -A
commit_at 1700010800 "topic edits"
git checkout -q main
for ((f = 2200; f < 2300; f++)); do gen_file "src/more/file$f.txt" 5; done
git add -A
commit_at 1700014400 "more files on main"
GIT_AUTHOR_DATE="@1700018000 +0000" GIT_COMMITTER_DATE="@1700018000 +0000" \
    git merge -q --no-edit topic -m "merge topic"

git gc -q --prune=now

# Each value is computed on its own line so that a failing command fails the
# script (set -e does not see failures inside "echo $(...)").
v=$(git rev-parse HEAD); echo "HEAD $v"
v=$(git rev-parse 'HEAD^{tree}'); echo "tree $v"
v=$(git log --format='%H %P %s'); echo "$v" | sed 's/^/log /'
v=$(git ls-files | wc -l); echo "files $v"
v=$(git log -p --stat --format=fuller | sha256sum); echo "log-p ${v%% *}"
v=$(git ls-tree -r -l HEAD | sha256sum); echo "ls-tree ${v%% *}"
v=$(git archive --format=tar HEAD | sha256sum); echo "archive ${v%% *}"
v=$(git diff --stat HEAD~3 HEAD | tail -n 1); echo "diff-stat $v"
v=$(git count-objects -v | grep -E '^(count|in-pack|packs):' | tr '\n' ' '); echo "objects $v"
v=$(git fsck --full --strict | sha256sum); echo "fsck ${v%% *}"
v=$(git blame --line-porcelain src/d0/file0.txt | sha256sum); echo "blame ${v%% *}"
v=$(git grep -c omega HEAD -- src/d5 | sha256sum); echo "grep ${v%% *}"
v=$(git rev-list --objects --all | sort | sha256sum); echo "rev-list ${v%% *}"
echo DONE
