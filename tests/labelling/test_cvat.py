"""CVAT for images 1.1 XML read as its format description shows it."""

from __future__ import annotations

import pytest

from pdml_ray.data import DataError
from pdml_ray.labelling.cvat import read_cvat
from pdml_ray.labelling.tool_clicks import to_point_table

CLASSES = ("sky", "ground", "ball")

EXPORT = b"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>clicks</name>
      <size>2</size>
      <mode>annotation</mode>
      <labels>
        <label><name>sky</name><attributes></attributes></label>
        <label><name>ball</name><attributes></attributes></label>
      </labels>
    </task>
    <dumped>2026-12-01 10:00:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="images/training/scene_0001.jpg" width="96" height="64">
    <points label="ball" occluded="0" source="manual" points="40.50,12.25" z_order="0">
    </points>
    <points label="sky" occluded="0" source="manual" points="0.00,0.00;95.99,63.99;96,64" z_order="0">
    </points>
    <box label="sky" occluded="0" source="manual" xtl="1" ytl="1" xbr="5" ybr="5" z_order="0">
    </box>
  </image>
  <image id="1" name="scene_0002.png" width="96" height="64">
  </image>
</annotations>
"""


def test_points_become_the_pixels_holding_them():
    clicks = read_cvat(EXPORT, "annotations.xml")
    table = to_point_table(clicks, CLASSES)
    # (40.5, 12.25) -> row 12, column 40; the far corner (96, 64) -> the last pixel,
    # as (95.99, 63.99) is: one pixel, one class, the repeat dropped
    assert table.for_image("scene_0001").tolist() == [[0, 0, 0], [12, 40, 2], [63, 95, 0]]
    assert table.duplicates_dropped == 1
    assert clicks.sizes == {"scene_0001": (64, 96)}
    assert "scene_0002" not in table


def test_an_unknown_label_is_one_error_naming_it():
    clicks = read_cvat(EXPORT.replace(b'label="ball"', b'label="person"'), "a.xml")
    with pytest.raises(DataError, match=r"unknown class 'person' \(image scene_0001\)"):
        to_point_table(clicks, CLASSES)


@pytest.mark.parametrize("content, message", [
    (b"<annotations><image name='x.jpg' width='10' height='10'>"
     b"<points label='sky' points='11,2'/></image></annotations>",
     r"image x: point \(x=11, y=2\) lies outside the 10x10"),
    (b"<annotations><image name='x.jpg' width='10' height='10'>"
     b"<points label='sky' points='1 2'/></image></annotations>", "points must be 'x,y' pairs"),
    (b"<annotations><image name='x.jpg' width='ten' height='10'>"
     b"<points label='sky' points='1,2'/></image></annotations>", "width and height must be whole"),
    (b"<annotations><image name='x.jpg' width='10' height='10'>"
     b"<points points='1,2'/></image></annotations>", "<points> without a label"),
    (b"<annotations><track id='0' label='sky'/></annotations>", "CVAT for video export"),
    (b"<dataset/>", "XML root is <dataset>"),
    (b"<annotations><image", "cannot read XML"),
    (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bb">]><annotations>&b;</annotations>',
     "XML with a DTD or entity declarations is refused"),
])
def test_malformed_exports_are_refused_saying_why(content, message):
    with pytest.raises(DataError, match=message):
        to_point_table(read_cvat(content, "a.xml"), CLASSES)
