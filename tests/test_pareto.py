from netadapt.family import member_name, pareto_front


def front(points):
    return pareto_front(points, lambda p: p[0], lambda p: p[1])


def test_pareto_front_drops_dominated_points():
    points = [(1.0, 0.80), (0.8, 0.82), (0.6, 0.70), (0.7, 0.69), (0.5, 0.60), (0.9, 0.81)]
    # (1.0, 0.80) is dominated by (0.8, 0.82); (0.7, 0.69) by (0.6, 0.70); (0.9, 0.81) by (0.8, 0.82).
    assert front(points) == [(0.5, 0.60), (0.6, 0.70), (0.8, 0.82)]


def test_pareto_front_ties():
    # Equal latency: only the more accurate survives. Equal accuracy: only the faster.
    assert front([(1.0, 0.5), (1.0, 0.7), (2.0, 0.7)]) == [(1.0, 0.7)]
    assert front([(1.0, 0.5), (1.0, 0.5)]) == [(1.0, 0.5)]
    assert front([]) == []


def test_member_names_sort_as_a_menu():
    names = [member_name(3, 1.25, 0.901), member_name(1, 0.4123, 0.8), member_name(2, 0.9, 0.854)]
    assert sorted(names) == ["01-0.412ms-acc80.0", "02-0.900ms-acc85.4", "03-1.250ms-acc90.1"]
    assert all("/" not in n and " " not in n for n in names)
