# Thin aliases for ./dev, which does the work (and needs no make).
.PHONY: run test bench sample-config
run:
	./dev run
test:
	./dev test
bench:
	./dev bench
sample-config:
	./dev sample-config
