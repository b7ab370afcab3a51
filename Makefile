# Thin aliases for ./dev, which does the work (and needs no make).
.PHONY: run test check bench soak steady sample-config
run:
	./dev run
test:
	./dev test
check:
	./dev check
bench:
	./dev bench
soak:
	./dev soak $(SOAK_ARGS)
steady:
	./dev steady $(STEADY_ARGS)
sample-config:
	./dev sample-config
