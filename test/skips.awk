# test/skips.awk: one line per skipped test of a `go test -v` log, with the reason it gave:
# the first "file.go:N:" line logged under the test's "=== RUN/CONT/NAME" header, or right
# after its "--- SKIP" line (how a subtest's log is replayed in its parent's summary).
/^=== (RUN|CONT|NAME|PAUSE) / { current = $3; next }
/^[ \t]*--- (PASS|FAIL|SKIP): / {
	current = ""
	if ($2 == "SKIP:") { skipped[++n] = $3; after = $3 } else { after = "" }
	next
}
/\.go:[0-9]+: / {
	line = $0; sub(/^[ \t]+/, "", line)
	if (after != "" && !(after in reason)) { reason[after] = line; after = ""; next }
	if (current != "" && !(current in reason)) reason[current] = line
}
END {
	for (i = 1; i <= n; i++) {
		r = (skipped[i] in reason) ? ": " reason[skipped[i]] : ""
		print "skipped: " skipped[i] r
	}
}
