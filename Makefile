# Thin aliases for ./dev, which does the work (and needs no make).
.PHONY: run test bench soak sample-config
run:
	./dev run
test:
	./dev test
bench:
	./dev bench
soak:
	./dev soak $(SOAK_ARGS)
sample-config:
	./dev sample-config
