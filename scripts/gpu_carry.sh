#!/usr/bin/env bash
# Makes .gpu/packages.tar.xz: the SimpleITK and pydicom wheels for CPython 3.12 on x86-64 Linux, unpacked and
# xz-compressed (about 30 MB instead of 56), for a GPU machine that has torch but neither package and no package
# index (scripts/gpu_session.sh unpacks it). Run here, where pip reaches PyPI; .gpu/ is git-ignored and travels as a
# carried path. About 3 minutes (xz -9).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$work" \
    "SimpleITK==${SIMPLEITK_VERSION:-2.5.7}" "pydicom==${PYDICOM_VERSION:-3.0.2}"
mkdir -p "$work/site" .gpu
for wheel in "$work"/*.whl; do (cd "$work/site" && python3 -m zipfile -e "$wheel" .); done
tar -C "$work/site" -cf - . | xz -9 -T0 > .gpu/packages.tar.xz.part
mv .gpu/packages.tar.xz.part .gpu/packages.tar.xz
ls -l .gpu/packages.tar.xz
# the two real head CTs for MODE=head (read there as ../shared is here; .gpu/ is git-ignored: never committed)
REAL=${REAL_DATA:-../shared/data/real}
if [ -d "$REAL/head_ct_ge_dicom" ]; then
    mkdir -p .gpu/real && cp -r "$REAL/head_ct_ge_dicom" "$REAL/head_ct_vtk_headsq.nii.gz" .gpu/real/
    du -sh .gpu/real
fi
