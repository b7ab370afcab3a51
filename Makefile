# Thin aliases for ./dev, which does the work (and needs no make).
.PHONY: run test sample-config
run:
	./dev run
test:
	./dev test
sample-config:
	./dev sample-config
